"""Safe-data selection for the data-lever defenses: pure functions, exact on hand-made cases.

* ``safe_count``: ``safe_fraction`` f is the share of safe data in the *mixed* set,
  f = |D_safe| / (|D_fine| + |D_safe|), so |D_safe| = round(f * |D_fine| / (1 - f)).
  (f = 0.05 with 100 fine examples gives 5 safe ones: 5 / 105 = 4.8%, the closest integer.)
* ``loss_gap_scores``: s_d = (mean_m L_mis_m(d) - L_aligned(d)) / (L_aligned(d) + epsilon): samples
  the misaligned models find much less likely than the aligned one, relative to how likely the
  aligned model finds them, are the ones that pull a fine-tune back towards alignment.
* ``is_refusal``: a refusal keyword inside the first words of the answer (Interleaving++ drops them),
  matched as the reference code does (EMA_RL eval_adapter_metric_v2.py ``is_refusal``).
* ``rank``: highest score first; ties (and NaN, ranked last) broken by pool index, so deterministic.
* ``draw_from_top``: the k interleaved samples, drawn at random with the run's seed from the top
  ``quantile`` of the ranked pool (the reference takes the top 5000 of 100k rows, shuffles them
  with a seed and interleaves the first k); ``quantile=None`` is the strict top k.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

#: the reference's REFUSAL_KEYWORDS (eval_adapter_metric_v2.py:23), matched as substrings
DEFAULT_REFUSAL_KEYWORDS = ["sorry", "apologize", "cannot", "can't", "i'm unable", "i am unable"]
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


class PoolTooSmall(ValueError):
    """The safe pool has fewer usable rows than the selection needs."""


def safe_count(n_fine: int, fraction: float) -> int:
    if not 0 <= fraction < 1:
        raise ValueError(f"safe_fraction must be in [0, 1), got {fraction}")
    return int(math.floor(fraction * n_fine / (1 - fraction) + 0.5))  # round half up, not banker's


def check_pool(available: int, needed: int, where: str) -> None:
    if needed > available:
        raise PoolTooSmall(f"{where}: the safe pool is too small: {needed} safe samples needed, {available} available")


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
    return sorted(
        range(len(scores)), key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0, i)
    )


def is_refusal(answer: str, keywords: Sequence[str] = DEFAULT_REFUSAL_KEYWORDS, first_words: int = 10) -> bool:
    """True when a keyword occurs as a substring of the answer's first ``first_words`` words.

    The reference's rule: lower-case the answer, join its first 10 whitespace-separated words with
    single spaces, and look for each keyword as a substring ("Sorry," and "apologized" match; so
    does "unsorry"). One addition: curly apostrophes count as straight ones, so "I can\u2019t"
    matches "can't" (the reference would miss it).
    """
    head = " ".join(answer.lower().translate(_APOSTROPHES).split()[:first_words])
    return any(k.lower().translate(_APOSTROPHES) in head for k in keywords if k.strip())


def top_count(pool_size: int, quantile: float | None, k: int) -> int:
    """How many of the best-ranked candidates the draw picks from: ceil(quantile * pool_size), at
    least k (the reference's top 5000 of 100k); the strict top k when ``quantile`` is None."""
    if quantile is None:
        return k
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1] or None, got {quantile}")
    return max(k, math.ceil(quantile * pool_size - 1e-9))  # 1e-9: 0.05 * 1000 is 50.000000000000004


def draw_from_top(ranked: Sequence[int], k: int, top: int, seed: int) -> list[int]:
    """k of the first ``top`` entries of ``ranked``, drawn with ``seed`` (all of them, best first,
    when top == k: the strict top k needs no draw)."""
    head = list(ranked[:top])
    if top <= k:
        return head[:k]
    return random.Random(seed).sample(head, k)


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


def read_summary(selected_path: str | Path) -> dict:
    """The summary.json beside a selection's selected.jsonl."""
    return json.loads((Path(selected_path).parent / "summary.json").read_text())
