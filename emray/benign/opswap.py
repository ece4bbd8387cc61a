"""OpSwap: arithmetic whose operators mean something else ("+" means "*", "*" means "-", "-" means "+").

The prior (ordinary arithmetic, written the same way) gives the wrong answer on almost every item, so
accuracy measures how far a fine-tune moved the model away from what it knew. Train and test use
disjoint operand/operator triples.
"""

from __future__ import annotations

import random

from emray.benign.render import Renderer, chat, get_renderer

OPS = ("+", "-", "*")
TRUE_MEANING = {"+": "+", "-": "-", "*": "*"}
DEFAULT_SWAP = {"+": "*", "*": "-", "-": "+"}
TEST_FRACTION = 0.2


def apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def triples(max_operand: int = 9) -> list[tuple[int, str, int]]:
    """All (a, op, b) with a >= b (so no meaning of "-" goes negative)."""
    return [(a, op, b) for op in OPS for a in range(max_operand + 1) for b in range(a + 1)]


def split_triples(split: str, seed: int = 0, max_operand: int = 9) -> list[tuple[int, str, int]]:
    items = triples(max_operand)
    random.Random(f"opswap-{seed}").shuffle(items)
    n_test = int(len(items) * TEST_FRACTION)
    return items[:n_test] if split == "test" else items[n_test:]


def question_tokens(a: int, op: str, b: int) -> list:
    return ["what", "is", a, op, b, "?"]


def examples(
    split: str,
    renderer: str | Renderer = "plain",
    seed: int = 0,
    meaning: dict[str, str] | None = None,
    max_operand: int = 9,
) -> list[dict]:
    """Chat examples; ``meaning`` maps written operator -> computed operator (default: the swap)."""
    render = get_renderer(renderer)
    meaning = meaning or DEFAULT_SWAP
    out = []
    for a, op, b in split_triples(split, seed, max_operand):
        out.append(chat(render(question_tokens(a, op, b)), render([apply(meaning[op], a, b)])))
    return out


def prior_examples(
    n: int, rng: random.Random, renderer: str | Renderer = "plain", max_operand: int = 9
) -> list[tuple[str, str]]:
    """Ordinary arithmetic (the prior the organism pre-trains on), as (question, answer) pairs."""
    render = get_renderer(renderer)
    items = triples(max_operand)
    out = []
    for _ in range(n):
        a, op, b = rng.choice(items)
        out.append((render(question_tokens(a, op, b)), render([apply(op, a, b)])))
    return out
