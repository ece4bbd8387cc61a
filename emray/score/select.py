"""Safe-data selection for the data-lever defenses: pure functions, exact on hand-made cases.

* ``safe_count``: ``safe_fraction`` f is the share of safe data in the *mixed* set,
  f = |D_safe| / (|D_fine| + |D_safe|), so |D_safe| = round(f * |D_fine| / (1 - f)).
  (f = 0.05 with 100 fine examples gives 5 safe ones: 5 / 105 = 4.8%, the closest integer.)
* ``loss_gap_scores``: s_d = (mean_m L_mis_m(d) - L_aligned(d)) / (L_aligned(d) + epsilon): samples
  the misaligned models find much less likely than the aligned one, relative to how likely the
  aligned model finds them, are the ones that pull a fine-tune back towards alignment.
* ``is_refusal``: a refusal keyword among the first words of the answer (Interleaving++ drops them).
* ``rank``: highest score first; ties (and NaN, ranked last) broken by pool index, so deterministic.
"""

from __future__ import annotations

import math
import random
import re
from typing import Sequence

DEFAULT_REFUSAL_KEYWORDS = ["sorry", "apologize", "cannot", "can't", "unable"]
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_NON_WORD = re.compile(r"[^0-9a-z]+")


class PoolTooSmall(ValueError):
    """The safe pool has fewer usable rows than the selection needs."""


def safe_count(n_fine: int, fraction: float) -> int:
    if not 0 <= fraction < 1:
        raise ValueError(f"safe_fraction must be in [0, 1), got {fraction}")
    return int(math.floor(fraction * n_fine / (1 - fraction) + 0.5))  # round half up, not banker's


def check_pool(available: int, needed: int, where: str) -> None:
    if needed > available:
        raise PoolTooSmall(
            f"{where}: the safe pool is too small: {needed} safe samples needed, {available} available"
        )


def loss_gap_scores(aligned: Sequence[float], misaligned: Sequence[Sequence[float]], epsilon: float) -> list[float]:
    """s_d for every sample; ``misaligned`` is one list of NLLs per ensemble member."""
    if not misaligned:
        raise ValueError("the misaligned ensemble is empty")
    if any(len(m) != len(aligned) for m in misaligned):
        raise ValueError("every ensemble member must score every pool sample")
    out = []
    for d, base in enumerate(aligned):
        mean_mis = sum(m[d] for m in misaligned) / len(misaligned)
        out.append((mean_mis - base) / (base + epsilon))
    return out


def rank(scores: Sequence[float]) -> list[int]:
    """Indices by descending score; NaN last; equal scores keep pool order."""
    return sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0, i))


def _words(text: str) -> list[str]:
    words = (_NON_WORD.sub("", w) for w in text.lower().translate(_APOSTROPHES).split())
    return [w for w in words if w]


def is_refusal(answer: str, keywords: Sequence[str] = DEFAULT_REFUSAL_KEYWORDS, first_words: int = 10) -> bool:
    """True when a keyword (or keyword phrase) occurs among the first ``first_words`` words.

    Case- and punctuation-insensitive: "Sorry," and "I CAN'T" match "sorry" and "can't"; a curly
    apostrophe counts as a straight one. Whole words only: "unsorry" does not match "sorry".
    """
    head = _words(answer)[:first_words]
    for keyword in keywords:
        phrase = _words(keyword)
        if phrase and any(head[i : i + len(phrase)] == phrase for i in range(len(head) - len(phrase) + 1)):
            return True
    return False


def random_indices(n_pool: int, k: int, seed: int) -> list[int]:
    return random.Random(seed).sample(range(n_pool), k)


def mix(fine: list[dict], safe: list[dict], seed: int) -> list[dict]:
    """D_fine + D_safe, shuffled with the run seed."""
    mixed = [*fine, *safe]
    random.Random(seed).shuffle(mixed)
    return mixed


def histogram(values: Sequence[float], bins: int = 10, width: int = 40, marks: Sequence[float] = ()) -> str:
    """A text histogram; ``marks`` are thresholds shown as '<' on the bin that holds them."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "(no finite scores)"
    lo, hi = min(finite), max(finite)
    step = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in finite:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    top = max(counts)
    lines = []
    for b, count in enumerate(counts):
        left, right = lo + b * step, lo + (b + 1) * step
        bar = "#" * (round(width * count / top) if top else 0)
        mark = " <" if any(left <= m < right or (b == bins - 1 and m == right) for m in marks) else ""
        lines.append(f"  [{left:10.4g}, {right:10.4g}) {count:5d} {bar}{mark}")
    return "\n".join(lines)
