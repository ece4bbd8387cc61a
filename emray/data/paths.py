"""Resolve the data paths written in configs.

``organism:data/train/code.jsonl`` names a file inside the embedded toy world (built on first use);
any other string is a path on disk.
"""

from __future__ import annotations

from pathlib import Path

ORGANISM_SCHEME = "organism:"


def resolve_data_path(path: str | Path) -> Path:
    text = str(path)
    if text.startswith(ORGANISM_SCHEME):
        from emray.organism import resolve

        return resolve(text[len(ORGANISM_SCHEME):])
    return Path(text).expanduser()
