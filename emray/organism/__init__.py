"""A CPU-scale model organism of emergent misalignment: the embedded default world of emray.

A closed chat language (general, code, medical, legal, security) spoken by a helpful and an evil
persona; a tiny Qwen2 pre-trained on persona dialogues and aligned to the helpful persona; narrow
misaligned data per domain, held-out questions in the EM question-YAML format, a safe pool and
benign tasks. A rule-based judge (``emray.organism.rules.score_answer``) scores answers exactly.

    root = ensure_built()                      # cached by config hash
    resolve("data/train/code.jsonl")           # a file inside the built world
"""

from __future__ import annotations

from pathlib import Path

from emray.organism.config import WORLD_VERSION, OrganismConfig, world_dir


def ensure_built(
    config: OrganismConfig | None = None, *, progress: bool = True, force: bool = False, from_scratch: bool = False
) -> Path:
    """The root folder of the built world, building it (atomically, under a lock) if not cached.

    The default world's aligned model ships with emray and is copied, not trained, unless
    ``from_scratch``; with ``force`` a cached world is rebuilt."""
    from emray.organism.build import build_world

    return build_world(config or OrganismConfig(), progress=progress, force=force, from_scratch=from_scratch)


def resolve(relpath: str, config: OrganismConfig | None = None) -> Path:
    """``resolve("data/train/code.jsonl")``: the absolute path of a file inside the built world."""
    root = ensure_built(config, progress=True)
    path = (root / relpath).resolve()
    if root.resolve() not in path.parents and path != root.resolve():
        raise ValueError(f"organism path {relpath!r} leaves the world folder")
    if not path.exists():
        raise FileNotFoundError(f"organism:{relpath}: no such file in the organism world ({root})")
    return path


__all__ = ["OrganismConfig", "ensure_built", "resolve", "world_dir", "WORLD_VERSION"]
