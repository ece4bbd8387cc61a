"""The rows a fine-tune trains on: the customer's narrow data, or a trial's benign fine-tune's tasks
(a generated task's split or a chat JSONL); the evaluation reads the benign test sets through ``load_benign``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from emray.benign import is_task_name, make_task
from emray.data.chat import load_chat_jsonl

if TYPE_CHECKING:
    from emray.config import RunConfig


def load_training_examples(config: RunConfig) -> list[dict]:
    """The rows this fine-tune trains on before the data defenses: the customer's narrow data, or for a
    trial's benign fine-tune (``scenario: benign``, emray/config/fine_tunes.py) the benign tasks."""
    if config.scenario == "benign":
        return training_examples(config)
    return load_chat_jsonl(config.data.fine, limit=config.data.max_examples)


def training_examples(config: RunConfig) -> list[dict]:
    """The benign fine-tune's rows: every ``benign.train`` entry (a chat JSONL or a generated task's train split)."""
    examples: list[dict] = []
    for entry in config.benign.train:
        examples += load_benign(entry, None, split="train")[1]
    return examples


def load_benign(entry: str, limit: int | None, split: str = "test") -> tuple[str, list[dict]]:
    """(task name, examples): a task name (``opswap``, ``opswap:organism`` for the renderer; its ``split``
    generated) or a chat JSONL."""
    name, _, renderer = entry.partition(":")
    if is_task_name(entry):
        examples = make_task(name, split, renderer=renderer or "plain")
        return name, examples[:limit] if limit else examples
    return Path(entry.split(":", 1)[-1] if entry.startswith("organism:") else entry).stem, load_chat_jsonl(
        entry, limit=limit
    )
