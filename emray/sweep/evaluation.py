"""The sweep's evaluation half: the shared judge pool and one trial's generation -> judge -> criteria.

Generation runs as a Ray task with the trial's resources (one GPU on a cluster), so it can use a
different device layout than training (ZeRO-3 shards are no use to ``generate``), or in the trial's
own process when the trial trains there (``resources.launcher``); judging goes
through the judge actor pool that every trial shares, with its on-disk cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def start_judge(spec) -> tuple[Any, Callable[[], None]]:
    """The shared judge pool for a sweep; ``base_url: local`` gives each actor a local judge server."""
    from emray.eval.judge_pool import JudgePool

    pool = JudgePool.create(
        spec.base.eval.judge, spec.resources.judge_actors, name=f"emray-judge-{spec.name}", detached=False
    )
    return pool, pool.shutdown


def _evaluate_task(run, adapter: str, out_dir: str, judge) -> dict:
    """The evaluation as a Ray task: ``run`` (the RunConfig) arrives pickled, as it is."""
    from emray.eval.run import evaluate
    from emray.train.common import set_threads
    from emray.train.progress import trial_output

    set_threads(run.train.threads)
    with trial_output(Path(out_dir).parent):  # SWEEP_DIR/logs/<key>.log, as the training workers
        return evaluate(run, adapter=adapter, judge=judge, out_dir=out_dir, progress=False)


def evaluate_adapter(run, adapter: Path, out_dir: Path, judge) -> dict:
    """The trial's evaluation: in the trial's own process when it trains there (it holds the CPUs,
    emray/train/launch.py), else a Ray task with the trial's resources."""
    if run.resources.runs_in_trial():
        return _evaluate_task(run, str(adapter), str(out_dir), judge)
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    res = run.resources
    task = ray.remote(_evaluate_task).options(
        num_cpus=res.cpus_per_worker,
        num_gpus=1 if res.use_gpu else 0,
        # Outside the trial's token placement group: this task holds real resources of its own.
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    )
    return ray.get(task.remote(run, str(adapter), str(out_dir), judge))
