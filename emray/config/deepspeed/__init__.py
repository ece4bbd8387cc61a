"""DeepSpeed ZeRO configs: zero2 for 7B-class models, zero3 for 32B-class (sharded parameters).

``resources.deepspeed`` is ``none``, ``zero2``, ``zero3`` (the JSON files beside this module) or the
path of the user's own DeepSpeed JSON (CPU offload, bucket sizes, ...). A user file is checked when
the config is validated, so a typo fails before any worker starts.
"""

from __future__ import annotations

import json
from pathlib import Path

BUILTIN = ("none", "zero2", "zero3")


def load_user_config(path: str | Path) -> dict:
    """Read and check a user DeepSpeed JSON; ``ValueError`` names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"resources.deepspeed: {path} is not one of {', '.join(BUILTIN)} and no such file exists")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"resources.deepspeed: {path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(config, dict):
        raise ValueError(f"resources.deepspeed: {path}: expected a JSON object, got {type(config).__name__}")
    stage = (config.get("zero_optimization") or {}).get("stage")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"resources.deepspeed: {path}: zero_optimization.stage must be 0-3, got {stage!r}")
    return config


def deepspeed_config(stage: str) -> dict | None:
    """The config dict for ``none`` / ``zero2`` / ``zero3`` / a JSON path ("auto" values are filled by HF Trainer)."""
    if stage == "none":
        return None
    if stage in BUILTIN:
        return json.loads((Path(__file__).parent / f"{stage}.json").read_text())
    return load_user_config(stage)


def zero_stage(config: dict | None) -> int:
    return int((config or {}).get("zero_optimization", {}).get("stage", 0))
