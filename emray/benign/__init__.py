"""Benign tasks that need real deviation from the model's prior; accuracy is the metric.

Each task generates chat examples ``{"messages": [user, assistant(GOLD)]}`` through a *renderer*
(a list of abstract tokens -> text), so the same task is written in plain English for real models
(``plain``) and in the organism's closed language (``organism``: lower case, space-separated words,
numbers digit by digit). Accuracy = exact match of the stripped greedy generation with GOLD.
"""

from __future__ import annotations

from emray.benign.render import (  # noqa: F401 (the package's API)
    RENDERERS,
    Renderer,
    Token,
    accuracy,
    chat,
    get_renderer,
    organism,
    plain,
)

TASKS = ("opswap", "wordmap")


def is_task_name(entry: str) -> bool:
    """True for a generated task (``opswap``, ``wordmap:organism``), false for a file path."""
    return entry.partition(":")[0] in TASKS and not entry.endswith(".jsonl")


def make_task(name: str, split: str, renderer: str | Renderer = "plain", seed: int = 0) -> list[dict]:
    """Examples of benign task ``name`` (``opswap`` | ``wordmap``), split ``train`` or ``test``."""
    from emray.benign import (  # the tasks import emray.benign.render, not this package
        opswap,
        wordmap,
    )

    module = {"opswap": opswap, "wordmap": wordmap}[name]
    return module.examples(split, renderer=renderer, seed=seed)
