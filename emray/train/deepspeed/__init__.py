"""DeepSpeed ZeRO configs: zero2 for 7B-class models, zero3 for 32B-class (sharded parameters)."""

from __future__ import annotations

import json
from pathlib import Path


def deepspeed_config(stage: str) -> dict | None:
    """The config dict for ``none`` / ``zero2`` / ``zero3`` ("auto" values are filled by HF Trainer)."""
    if stage == "none":
        return None
    return json.loads((Path(__file__).parent / f"{stage}.json").read_text())
