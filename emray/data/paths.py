"""Resolve the data paths written in configs.

``organism:data/train/code.jsonl`` names a file inside the embedded toy world (built on first use);
any other string is a path on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

ORGANISM_SCHEME = "organism:"
ORGANISM_PRESETS = ("full", "quick")


def organism_config():
    """The organism world configs resolve to: ``EMRAY_ORGANISM=quick`` picks the small test world
    (15 s to build; too small for EM) for CI; the default is the full world."""
    from emray.organism import OrganismConfig

    preset = os.environ.get("EMRAY_ORGANISM", "full")
    if preset not in ORGANISM_PRESETS:
        raise ValueError(f"EMRAY_ORGANISM={preset!r}: expected one of {', '.join(ORGANISM_PRESETS)}")
    return OrganismConfig.quick() if preset == "quick" else OrganismConfig()


def resolve_data_path(path: str | Path) -> Path:
    text = str(path)
    if text.startswith(ORGANISM_SCHEME):
        from emray.organism import resolve

        return resolve(text[len(ORGANISM_SCHEME):], organism_config())
    return Path(text).expanduser()
