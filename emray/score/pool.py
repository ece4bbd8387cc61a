"""The ensemble scorer: one base model with every misaligned adapter, on a pool of Ray actors.

Each actor loads the base model once and every adapter beside it (peft ``load_adapter``), and
switches with ``set_adapter`` (or ``disable_adapter`` for the aligned base), so scoring M+1 models
costs one model load. The driver shards the pool across actors, balanced by length: samples sorted
by token count are dealt round-robin, so every actor gets a similar token load. ``workers=0`` runs
the same scorer in this process (no Ray), which is what small jobs and tests of the math use.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ALIGNED = "aligned"


class Scorer:
    """Base model + named LoRA adapters; ``score(examples, names)`` -> {name: [nll per example]}."""

    def __init__(
        self,
        model_cfg: dict,
        adapters: dict[str, str],
        max_len: int | None = None,
        token_budget: int | None = None,
        max_batch: int | None = None,
        threads: int | None = 1,
        device: str | None = None,
    ):
        import torch

        from emray.config import ModelConfig
        from emray.models import load_model

        if threads and not torch.cuda.is_available():
            torch.set_num_threads(threads)
        model, self.tokenizer = load_model(ModelConfig.model_validate(model_cfg), device=device)
        if adapters:
            from peft import PeftModel

            names = list(adapters)
            model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(adapters[name], adapter_name=name)
        self.model = model.eval()
        self.adapters = dict(adapters)
        self.max_len, self.token_budget, self.max_batch = max_len, token_budget, max_batch

    def score(self, examples: list[dict], names: list[str]) -> dict[str, list[float]]:
        from emray.score.nll import score_rows, select_model, tokenize_pool

        rows = tokenize_pool(self.tokenizer, examples, self.max_len)
        pad_id = self.tokenizer.pad_token_id
        out = {}
        for name in names:
            with select_model(self.model, None if name == ALIGNED else name):
                out[name] = score_rows(self.model, rows, pad_id, self.token_budget, self.max_batch)
        return out

    def answer_tokens(self, examples: list[dict]) -> list[int]:
        from emray.score.nll import answer_token_count, tokenize_pool

        return [answer_token_count(r) for r in tokenize_pool(self.tokenizer, examples, self.max_len)]


def _balanced_shards(examples: list[dict], n: int) -> list[list[int]]:
    """Indices dealt round-robin in order of text length, so shards carry similar token loads."""
    size = [sum(len(m["content"]) for m in ex["messages"]) for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: (-size[i], i))
    return [order[k::n] for k in range(n)]


class ScorerPool:
    """``workers`` Ray actors (one GPU each when ``use_gpu``), or the in-process scorer for ``workers=0``.

    Use as a context manager; Ray is started (local, no dashboard) when not running and stopped on
    exit only if this pool started it.
    """

    def __init__(
        self,
        model_cfg: dict,
        adapters: dict[str, str],
        workers: int = 1,
        use_gpu: bool = False,
        max_len: int | None = None,
        token_budget: int | None = None,
        max_batch: int | None = None,
        threads: int | None = 1,
    ):
        self.kwargs = dict(
            model_cfg=model_cfg,
            adapters={k: str(v) for k, v in adapters.items()},
            max_len=max_len,
            token_budget=token_budget,
            max_batch=max_batch,
            threads=threads,
        )
        self.workers, self.use_gpu = workers, use_gpu
        self.actors: list[Any] = []
        self._local: Scorer | None = None
        self._started_ray = False

    def __enter__(self) -> ScorerPool:
        if self.workers <= 0:
            self._local = Scorer(**self.kwargs)  # type: ignore[arg-type]  # kwargs built from Scorer's own signature
            return self
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        resources = {"num_gpus": 1, "num_cpus": 1} if self.use_gpu else {"num_cpus": 1}
        actor_cls = ray.remote(**resources)(Scorer)  # type: ignore[call-overload]  # ray's overloads take literals
        self.actors = [actor_cls.remote(**self.kwargs) for _ in range(self.workers)]
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()

    def score(self, examples: list[dict], names: list[str], progress: bool = False) -> dict[str, list[float]]:
        started = time.time()
        if self._local is not None:
            out = self._local.score(examples, names)
        else:
            import ray

            shards = _balanced_shards(examples, len(self.actors))
            futures = [a.score.remote([examples[i] for i in s], names) for a, s in zip(self.actors, shards) if s]
            out = {name: [math.nan] * len(examples) for name in names}
            for shard, result in zip([s for s in shards if s], ray.get(futures)):
                for name in names:
                    for i, value in zip(shard, result[name]):
                        out[name][i] = value
        if progress:
            print(
                f"  scored {len(examples)} samples x {len(names)} models in {time.time() - started:.1f} s "
                f"({max(self.workers, 1)} worker(s))",
                file=sys.stderr,
                flush=True,
            )
        return out

    def answer_tokens(self, examples: list[dict]) -> list[int]:
        if self._local is not None:
            return self._local.answer_tokens(examples)
        import ray

        return ray.get(self.actors[0].answer_tokens.remote(examples))


def adapter_names(adapter_dirs: Sequence[str | Path]) -> dict[str, str]:
    """Stable names for the ensemble members: mis0, mis1, ..."""
    return {f"mis{i}": str(d) for i, d in enumerate(adapter_dirs)}
