"""Resolve the data paths written in configs.

``organism:data/train/code.jsonl`` names a file inside the embedded toy world (built on first use);
any other string is a path on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from emray.hashing import dir_sha256, file_sha256

ORGANISM_SCHEME = "organism:"
ORGANISM_PRESETS = ("full", "quick")


def organism_config():
    """The organism world configs resolve to: ``EMRAY_ORGANISM=quick`` picks the small test world
    (15 s to build; too small for EM) for CI; the default is the full world. ``EMRAY_ORGANISM_SEED=N``
    picks world seed N (default 0, the world emray ships; other seeds are built on first use, ~3-10 min)."""
    from emray.organism import OrganismConfig

    preset = os.environ.get("EMRAY_ORGANISM", "full")
    if preset not in ORGANISM_PRESETS:
        raise ValueError(f"EMRAY_ORGANISM={preset!r}: expected one of {', '.join(ORGANISM_PRESETS)}")
    seed_text = os.environ.get("EMRAY_ORGANISM_SEED", "0")
    try:
        seed = int(seed_text)
    except ValueError:
        raise ValueError(f"EMRAY_ORGANISM_SEED={seed_text!r}: expected an integer world seed") from None
    return OrganismConfig.quick(seed=seed) if preset == "quick" else OrganismConfig(seed=seed)


def resolve_data_path(path: str | os.PathLike) -> Path:
    text = str(path)
    if text.startswith(ORGANISM_SCHEME):
        from emray.organism import resolve

        return resolve(text[len(ORGANISM_SCHEME) :], organism_config())
    return Path(text).expanduser()


def content_identity(path: str | None) -> str | None:
    """What a path holds now: the organism world's config hash, a file's or folder's content hash.

    A name that is not on disk (a hub id, a benign task name, a file still to be built) is itself.
    Nothing is built here: ``--dry-run`` must stay instant.
    """
    if path is None:
        return None
    text = str(path)
    if text.startswith(ORGANISM_SCHEME) or text == "organism":
        return f"organism-world:{organism_config().hash()}"
    local = Path(text).expanduser()
    if local.is_file():
        return file_sha256(local)
    if local.is_dir():
        return dir_sha256(local)
    return text
