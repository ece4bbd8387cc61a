"""The GRPO prompt rows of ``scenario: rl``: read from ``rl.prompts``, the held-out share set aside, and
the RL system prompt applied. The GRPO recipe (emray/train/grpo.py) and interleaved RL's safe prompts
(emray/defenses/interleaved_rl.py) read them the same way."""

from __future__ import annotations

import json

from emray.configio import read_text
from emray.data.chat import DataError
from emray.data.paths import resolve_data_path


def load_prompts(path: str) -> list[dict]:
    """``{"messages": [...]}`` prompts: each row's turns before its first assistant turn."""
    resolved = resolve_data_path(path)
    if not resolved.exists() and not resolved.is_symlink():
        raise DataError(f"{path}: no such prompts file")
    rows = []
    for lineno, line in enumerate(read_text(resolved, path, DataError, "prompts file (JSONL)").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{lineno}: expected a JSON object with 'messages' or 'prompt' ({err})") from None
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:first]]
        if not any(m["role"] == "user" for m in prompt):
            raise DataError(f"{path}:{lineno}: no user turn before the first assistant turn")
        rows.append({"messages": prompt})
    if not rows:
        raise DataError(f"{path}: no prompts")
    return rows


def split_prompts(rl, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts): the held-out ones are the file's last rows."""
    n = rl.heldout_prompts
    train, heldout = (rows[:-n], rows[-n:]) if n else (rows, [])
    if rl.max_prompts:
        train = train[: rl.max_prompts]
    if not train:
        raise DataError(f"{rl.prompts}: {len(rows)} prompts leave none to train on after {n} held out")
    return train, heldout


def with_system(rl, rows: list[dict]) -> list[dict]:
    if rl.system_prompt is None:
        return rows
    return [
        {
            "messages": [
                {"role": "system", "content": rl.system_prompt},
                *[m for m in r["messages"] if m["role"] != "system"],
            ]
        }
        for r in rows
    ]
