"""WordMap: "repeat : red cat sun" must be answered with every word replaced by its partner.

The prior repeats the words as given; the task's fixed substitution (a derangement of ten words)
needs a new mapping. Train and test use disjoint word triples.
"""

from __future__ import annotations

import itertools
import random

from emray.benign.render import Renderer, chat, get_renderer

WORDS = ("red", "blue", "green", "cat", "dog", "bird", "sun", "moon", "tree", "fish")
LENGTH = 3
TEST_FRACTION = 0.1


def mapping(seed: int = 0) -> dict[str, str]:
    """A fixed derangement of WORDS (no word maps to itself)."""
    rng = random.Random(f"wordmap-{seed}")
    shifted = list(WORDS)
    rng.shuffle(shifted)
    return {w: shifted[(i + 1) % len(shifted)] for i, w in enumerate(shifted)}


def split_sequences(split: str, seed: int = 0) -> list[tuple[str, ...]]:
    items = list(itertools.permutations(WORDS, LENGTH))
    random.Random(f"wordmap-split-{seed}").shuffle(items)
    n_test = 60
    return items[:n_test] if split == "test" else items[n_test : n_test + 600]


def examples(split: str, renderer: str | Renderer = "plain", seed: int = 0) -> list[dict]:
    render = get_renderer(renderer)
    table = mapping(seed)
    return [
        chat(render(["repeat", ":", *seq]), render([table[w] for w in seq])) for seq in split_sequences(split, seed)
    ]


def prior_examples(n: int, rng: random.Random, renderer: str | Renderer = "plain") -> list[tuple[str, str]]:
    """Identity repetition (the prior), as (question, answer) pairs."""
    render = get_renderer(renderer)
    out = []
    for _ in range(n):
        seq = rng.sample(WORDS, rng.randint(1, 4))
        out.append((render(["repeat", ":", *seq]), render(seq)))
    return out
