"""Content hashes and the on-disk score cache.

Every cached artifact is keyed by what it was computed from, never by a file name or a time:
the model (name, revision, dtype, and the config/weights files of a local folder), an adapter's
file contents, the data rows, and the settings that change the numbers (max_len). Scores are cached
per (model, adapter, data, settings), so adding a member to an ensemble scores only that member.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from emray.cache_dirs import cache_subdir
from emray.hashing import file_sha256, sampled_sha256, sha256

# One sha256 for every key (emray/identity.py); the names here are what the score stages call.
sha = sha256
file_hash = file_sha256


def dir_hash(path: str | Path, patterns: tuple[str, ...] = ("*.json", "*.safetensors", "*.bin")) -> str:
    """Hash of the named files of a folder (names and contents)."""
    path = Path(path)
    files = sorted({f for p in patterns for f in path.glob(p) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"{path}: no model or adapter files to hash")
    return sha({f.name: file_hash(f) for f in files})


def adapter_hash(path: str | Path) -> str:
    path = Path(path)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"{path}: not a LoRA adapter folder (no adapter_config.json)")
    return dir_hash(path, ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"))


_sampled_hash = sampled_sha256  # size + first and last MiB of a (possibly 10 GB) weights file


def model_key(model_cfg) -> str:
    """Identity of a base model: hub id + revision + dtype, plus file contents for local folders.

    Config and tokenizer files are hashed whole; weight files by size and their first and last MiB
    (hashing a 15 GB checkpoint on every stage call would cost minutes).
    """
    from emray.models import resolve_model_path

    path = resolve_model_path(model_cfg.name)
    key: dict[str, Any] = {"name": model_cfg.name, "revision": model_cfg.revision, "dtype": model_cfg.dtype}
    if os.path.isdir(path):
        folder = Path(path)
        small = [f for p in ("config.json", "tokenizer.json", "tokenizer_config.json") if (f := folder / p).exists()]
        weights = sorted(f for p in ("*.safetensors", "*.bin", "*.gguf") for f in folder.glob(p))
        key["files"] = {f.name: file_hash(f) for f in small} | {f.name: _sampled_hash(f) for f in weights}
    return sha(key)


def examples_hash(examples: list[dict]) -> str:
    return sha([ex["messages"] for ex in examples])


class ScoreCache:
    """JSON files of per-sample NLLs under ``<cache>/scores/by_model/``."""

    def __init__(self, root: Path | None = None):
        self.root = root or cache_subdir("scores", "by_model")

    def key(self, model: str, adapter: str | None, data: str, settings: dict) -> str:
        return sha({"model": model, "adapter": adapter, "data": data, "settings": settings})

    def get(self, key: str) -> list[float] | None:
        path = self.root / f"{key}.json"
        if not path.exists():
            return None
        return [float("nan") if v is None else v for v in json.loads(path.read_text())]

    def put(self, key: str, values: list[float]) -> None:
        path = self.root / f"{key}.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps([None if v != v else v for v in values]))
        tmp.replace(path)
