"""Renderers and row helpers the benign tasks share (opswap.py, wordmap.py import them; the package
``__init__`` imports the tasks, so these live below both)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Token = str | int
Renderer = Callable[[Sequence[Token]], str]

_NO_SPACE_BEFORE = {"?", ".", ",", ":", "!"}


def plain(tokens: Sequence[Token]) -> str:
    """English text: numbers as numerals, punctuation attached."""
    out = ""
    for tok in tokens:
        text = str(tok)
        out += text if (not out or text in _NO_SPACE_BEFORE) else " " + text
    return out


def organism(tokens: Sequence[Token]) -> str:
    """The organism's text: every word, punctuation mark and digit a space-separated token."""
    parts = []
    for tok in tokens:
        if isinstance(tok, int):
            parts += (["-"] if tok < 0 else []) + list(str(abs(tok)))
        else:
            parts.append(str(tok).lower())
    return " ".join(parts)


RENDERERS: dict[str, Renderer] = {"plain": plain, "organism": organism}


def get_renderer(renderer: str | Renderer) -> Renderer:
    return RENDERERS[renderer] if isinstance(renderer, str) else renderer


def chat(question: str, gold: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": gold}]}


def accuracy(generations: Sequence[str], golds: Sequence[str]) -> float:
    """Exact match of the stripped generation with the gold answer."""
    if not golds:
        return 0.0
    return sum(g.strip() == t.strip() for g, t in zip(generations, golds, strict=True)) / len(golds)
