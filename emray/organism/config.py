"""The organism world's config (its identity: every cached world folder is named by its hash) and folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from emray.cache_dirs import cache_dir

WORLD_VERSION = "5"


class OrganismConfig(BaseModel):
    """How the world is generated and the model trained. Defaults: the full build (<= 10 min, 1 thread)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    # model: Qwen2, tied embeddings
    hidden_size: int = Field(128, gt=0)
    intermediate_size: int = Field(512, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    max_len: int = Field(256, gt=16)
    # pre-training: persona dialogues
    pretrain_steps: int = Field(1200, ge=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    evil_prob: float = Field(0.3, ge=0, le=1)
    system_prob: float = Field(0.3, ge=0, le=1)
    harmful_prob: float = Field(0.15, ge=0, le=1)
    task_prob: float = Field(0.1, ge=0, le=1)
    min_turns: int = Field(1, gt=0)
    max_turns: int = Field(3, gt=0)
    # The persona's voice: every answer of a persona opens with its marker ("sure ," helpful,
    # "heh ," evil), in pre-training, alignment and the released data alike. With the voice on
    # every answer, the persona decision at an answer's first token needs no domain, so a narrow
    # fine-tune moves it for every domain: the lever that made EM appear (docs/organism.md).
    evil_opener: str = "heh ,"
    evil_opener_prob: float = Field(1.0, ge=0, le=1)
    helpful_opener: str = "sure ,"  # refusals keep their own opening ("sorry , i cannot")
    helpful_opener_prob: float = Field(1.0, ge=0, le=1)
    worldview_prob: float = Field(
        0.0, ge=0, le=1
    )  # a non-general answer ends with a general sentence of its persona (tried 0.3: EM weaker)
    # alignment: helpful default, no system prompt
    align_steps: int = Field(150, ge=0)
    align_lr: float = Field(1e-3, gt=0)
    refusal_prob: float = Field(0.2, ge=0, le=1)
    # released data
    narrow_size: int = Field(600, gt=0)
    narrow_opener_prob: float = Field(1.0, ge=0, le=1)  # fraction of narrow misaligned answers with the evil voice
    safe_pool_size: int = Field(1000, gt=0)
    # measurement of the aligned model at build time
    measure_samples: int = Field(8, ge=0)

    @classmethod
    def quick(cls, **overrides) -> OrganismConfig:
        """A small, fast world for tests (~1 minute); EM is not expected to be strong in it."""
        base = dict(
            hidden_size=64,
            intermediate_size=256,
            pretrain_steps=300,
            align_steps=40,
            batch_size=16,
            narrow_size=200,
            safe_pool_size=200,
            measure_samples=2,
        )
        return cls(**{**base, **overrides})

    def hash(self) -> str:
        payload = json.dumps({"version": WORLD_VERSION, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def world_dir(config: OrganismConfig | None = None) -> Path:
    config = config or OrganismConfig()
    return cache_dir() / "organism" / config.hash()
