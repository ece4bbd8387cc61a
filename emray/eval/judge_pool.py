"""The judge as a pool of async Ray actors, shared by every trial of a sweep.

Each actor holds one JudgeClient (its own HTTP session, semaphore, rate-limit buckets and a
connection to the shared sqlite cache); the pool splits the concurrency and the rate limits among
its actors, so N actors together respect the configured totals. Actors are named and detached:
``JudgePool.create`` in the driver starts them (or finds them), a trial gets the same pool with
``JudgePool.get(name)`` or by receiving the pickled pool. ``JudgePool`` and ``JudgeClient`` both
offer ``judge_many(requests, progress)``, so ``evaluate`` takes either.
"""

from __future__ import annotations

import math
from dataclasses import astuple
from typing import Any

from emray.config.eval import JudgeConfig
from emray.eval.judge import (
    JudgeClient,
    JudgeRequest,
    JudgeResult,
    JudgeStats,
    check_failure_rate,
)

DEFAULT_POOL_NAME = "emray-judge"
CHUNK = 64  # requests per actor call: small enough to balance actors and move a progress bar


def _actor_class():
    import ray

    @ray.remote(num_cpus=0, max_concurrency=1000)
    class JudgeActor:
        def __init__(self, cfg: dict, base_url: str | None = None):
            self.client = JudgeClient(JudgeConfig.model_validate(cfg), base_url=base_url)

        async def judge_many(self, requests: list[tuple[str, str]]) -> list[tuple]:
            # Failures come back marked: the pool applies the failure threshold to the whole request.
            results = await self.client.ajudge_many([JudgeRequest(p, m) for p, m in requests], max_failure_rate=1.0)
            return [astuple(r) for r in results]

        def stats(self) -> dict:
            return self.client.get_stats()

        def base_url(self) -> str:
            return self.client.base_url

        def close(self) -> None:
            self.client.close()

    return JudgeActor


def split_config(cfg: JudgeConfig, num_actors: int) -> JudgeConfig:
    """One actor's share: concurrency and rate limits divided among ``num_actors``."""
    share: dict[str, float] = {"concurrency": max(1, math.ceil(cfg.concurrency / num_actors))}
    if cfg.requests_per_minute:
        share["requests_per_minute"] = cfg.requests_per_minute / num_actors
    if cfg.tokens_per_minute:
        share["tokens_per_minute"] = cfg.tokens_per_minute / num_actors
    return cfg.model_copy(update=share)


class JudgePool:
    """Handle to N judge actors; picklable, so it can be passed to Tune trials."""

    def __init__(self, actors: list[Any], name: str = DEFAULT_POOL_NAME):
        if not actors:
            raise ValueError("a judge pool needs at least one actor")
        self.actors, self.name = actors, name

    @classmethod
    def create(
        cls,
        judge_config: JudgeConfig,
        num_actors: int | None = None,
        name: str = DEFAULT_POOL_NAME,
        base_url: str | None = None,
        detached: bool = True,
        namespace: str | None = None,
    ) -> JudgePool:
        """Start the pool (or attach to a running one with this name; its config then stays as it was)."""
        import ray

        n = num_actors or judge_config.num_actors
        cfg = split_config(judge_config, n).model_dump(mode="json")
        actor_cls = _actor_class()
        options: dict[str, Any] = {"get_if_exists": True}
        if detached:
            options["lifetime"] = "detached"
        if namespace:
            options["namespace"] = namespace
        actors = [actor_cls.options(name=f"{name}-{i}", **options).remote(cfg, base_url) for i in range(n)]
        ray.get([a.base_url.remote() for a in actors])  # fail here, not in the first trial
        return cls(actors, name)

    @classmethod
    def get(cls, name: str = DEFAULT_POOL_NAME, namespace: str | None = None) -> JudgePool:
        """The running pool called ``name`` (from a trial, or another driver in the namespace)."""
        import ray

        actors: list = []
        while True:
            try:
                actors.append(ray.get_actor(f"{name}-{len(actors)}", namespace=namespace))
            except ValueError:
                break
        if not actors:
            raise ValueError(f"no judge pool named {name!r} is running (start one with JudgePool.create)")
        return cls(actors, name)

    def judge_many(
        self, requests: list[JudgeRequest], progress: bool | str = False, max_failure_rate: float = 0.0
    ) -> list[JudgeResult]:
        import ray

        requests = [r if isinstance(r, JudgeRequest) else JudgeRequest(*r) for r in requests]
        unique = list(dict.fromkeys((r.prompt, r.model) for r in requests))
        chunks = [unique[i : i + CHUNK] for i in range(0, len(unique), CHUNK)]
        futures = {self.actors[i % len(self.actors)].judge_many.remote(c): i for i, c in enumerate(chunks)}
        bar = None
        if progress and unique:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(unique), desc=progress if isinstance(progress, str) else "judge", unit="judgment")
        by_chunk: dict[int, list] = {}
        pending, first_error = list(futures), None
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            index = futures[done[0]]
            try:
                by_chunk[index] = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - keep collecting: finished chunks are cached
                first_error = first_error or err
            if bar is not None:
                bar.update(len(chunks[index]))
        if bar is not None:
            bar.close()
        if first_error is not None:
            raise first_error
        results = {}
        for index, chunk in enumerate(chunks):
            for key, (score, top, *rest) in zip(chunk, by_chunk[index]):
                results[key] = JudgeResult(score, [tuple(p) for p in top], *rest)
        check_failure_rate(sum(r.failed for r in results.values()), len(unique), max_failure_rate)
        return [results[(r.prompt, r.model)] for r in requests]

    def get_stats(self) -> dict[str, Any]:
        import ray

        total = JudgeStats()
        for stats in ray.get([a.stats.remote() for a in self.actors]):
            total.merge(stats)
        return total.as_dict()

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - it is going away anyway
                pass
            ray.kill(actor)

    def close(self) -> None:
        """Nothing: a pool outlives one evaluation (``shutdown`` ends it)."""
