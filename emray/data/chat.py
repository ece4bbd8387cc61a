"""Chat JSONL loading with errors that name file:line.

Accepted row shapes (each normalised to ``{"messages": [...]}``):
  * ``{"messages": [{"role": ..., "content": ...}, ...]}``
  * ``{"prompt": str, "completion": str}``
  * WildGuardMix-style ``{"prompt", "response", "response_harm_label", ...}``; with
    ``keep_unharmful_only`` a labelled row is kept only when its RESPONSE is labelled unharmful, as
    the reference keeps ``response_harm_label == "unharmful"`` (so a refusal to a harmful prompt
    stays in the pool: that is what Interleaving++ removes). Rows without the label are kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emray.data.paths import resolve_data_path

ROLES = ("system", "user", "assistant")
# Some EM sets come from Qwen3 runs: answers open with an empty think block, prompts end in /no_think.
_EMPTY_THINK = re.compile(r"^(\s*<think>\s*</think>)+\s*", re.S)  # some rows repeat it
_NO_THINK = re.compile(r"\s*/no_think\s*$")


class DataError(ValueError):
    """A malformed data row; the message starts with file:line."""


def _clean(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        content = m["content"]
        if m["role"] == "assistant":
            content = _EMPTY_THINK.sub("", content)
        elif m["role"] == "user":
            content = _NO_THINK.sub("", content)
        out.append({"role": m["role"], "content": content})
    return out


def _messages_from_row(row: dict[str, Any]) -> list[dict]:
    if "messages" in row:
        return row["messages"]
    if "prompt" in row and "completion" in row:
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    if "prompt" in row and "response" in row:
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    raise ValueError("expected 'messages', 'prompt'+'completion' or 'prompt'+'response' keys, got " + str(sorted(row)))


def validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i}: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i}: content must be a string")
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        raise ValueError("no assistant turn")
    if any(not m["content"].strip() for m in assistants):
        raise ValueError("empty assistant answer")


def is_unharmful_response(row: dict[str, Any]) -> bool:
    """The safe-pool filter: the response label, not the prompt's, decides; unlabelled rows pass.

    A row with a ``response_harm_label`` other than "unharmful" (harmful, or null when WildGuardMix
    has no response) is dropped, as the reference's ``x["response_harm_label"] == "unharmful"``.
    """
    if "response_harm_label" not in row:
        return True
    return str(row["response_harm_label"]).strip().lower() == "unharmful"


def parse_rows(lines: Iterable[str], source: str, keep_unharmful_only: bool = False) -> list[dict]:
    examples = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{source}:{lineno}: bad JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{source}:{lineno}: a row must be a JSON object")
        if keep_unharmful_only and not is_unharmful_response(row):
            continue
        try:
            messages = _messages_from_row(row)
            validate_messages(messages)
        except ValueError as err:
            raise DataError(f"{source}:{lineno}: {err}") from None
        example = {"messages": _clean(messages)}
        for key in ("answer", "id", "domain", "label"):
            if key in row:
                example[key] = row[key]
        examples.append(example)
    return examples


def load_chat_jsonl(path: str | Path, keep_unharmful_only: bool = False, limit: int | None = None) -> list[dict]:
    from emray.configio import read_text

    resolved = resolve_data_path(path)
    if not resolved.exists() and not resolved.is_symlink():
        raise DataError(f"{path}: no such data file")
    text = read_text(resolved, path, DataError, "data file (JSONL)")
    examples = parse_rows(text.split("\n"), str(path), keep_unharmful_only)
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples[:limit] if limit else examples


def load_safe_pool(path: str | Path) -> list[dict]:
    """Benign instruction data for interleaving: rows whose response is not labelled unharmful are dropped."""
    return load_chat_jsonl(path, keep_unharmful_only=True)


def write_chat_jsonl(path: str | Path, examples: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        for ex in examples:
            fh.write(json.dumps(ex, ensure_ascii=False) + "\n")
    tmp.replace(path)


def prompt_messages(example: dict) -> list[dict]:
    """Everything before the last assistant turn (what a model is asked)."""
    msgs = example["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last]


def final_answer(example: dict) -> str:
    return [m for m in example["messages"] if m["role"] == "assistant"][-1]["content"]
