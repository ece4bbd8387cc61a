"""Where a sweep trial's fine-tune runs: a Ray Train worker group, or the trial's own process.

A Ray Train fit starts a controller and a worker group (new processes that import torch,
transformers and TRL and load the model) for every fine-tune; on the organism that set-up costs
several times the training itself (BENCHMARKS.md, "Where a toy trial's time goes"). A fine-tune on one
CPU worker without DeepSpeed or Ray Train restarts needs none of it, so by default
(``resources.launcher: auto``) it runs in the Tune trial's actor, which then holds the worker's
CPUs; Tune reuses that actor for the next trial, so imports are paid once per actor, not per
fine-tune. Multi-worker, GPU, DeepSpeed and checkpointed fine-tunes keep the worker group, its
checkpoints and its restarts (emray/train/worker.py). Both run the same ``train_and_save``: the same
adapter either way (tests/test_launch.py).
"""

from __future__ import annotations

from pathlib import Path

from emray.config import RunConfig
from emray.train.common import check_finite, write_run_folder
from emray.train.worker import fit_with_ray_train, train_and_save


def fit(
    config: RunConfig, out_dir: Path, storage_path: str, artifacts: dict | None = None, trainer_callbacks=()
) -> str:
    """Fine-tune ``config`` into ``out_dir`` (adapter/, metrics.json) where ``config.resources`` says;
    returns which launcher ran it (``in_trial`` or ``ray_train``). ``trainer_callbacks`` (a sweep trial's
    early-stop probes, emray/train/probe.py) run in the trial's process only: a Ray Train worker's reports go
    to its own Train controller, not to the Tune trial, so a worker-group fine-tune runs without them."""
    if config.resources.runs_in_trial():
        fit_in_trial(config, out_dir, artifacts, trainer_callbacks)
        return "in_trial"
    fit_with_ray_train(config, out_dir, storage_path, artifacts)
    return "ray_train"


def fit_in_trial(config: RunConfig, out_dir: Path, artifacts: dict | None = None, trainer_callbacks=()) -> dict:
    """The worker loop of a one-worker fine-tune, in the calling process: the same recipe, adapter and
    run folder as a Ray Train worker of rank 0 in a world of one; returns the run's metrics."""
    import ray

    from emray.train.progress import live_callbacks, trial_output

    out_dir = Path(out_dir)
    with trial_output(out_dir):  # SWEEP_DIR/logs/<key>.log, as the worker group's output
        callbacks = live_callbacks(out_dir, rank=0) + list(trainer_callbacks)
        trained, metrics = train_and_save(config, out_dir, artifacts or {}, callbacks, rank=0, resume=None)
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        metrics.update(train_nodes=[node] if node else [], world_size=1)
        result = write_run_folder(config, out_dir, None, trained.tokenizer, trained.history, metrics)
        check_finite(trained.history, out_dir / "metrics.json")
    return result.metrics


def describe_launch(run: RunConfig) -> str:
    """The dry-run plan's line on where a trial's fine-tunes run and how often it loads the base model."""
    res = run.resources
    if res.runs_in_trial():
        where = f"in the trial's own process ({res.cpus_per_worker:g} CPU; launcher {res.launcher})"
    else:
        engine = (
            f"DeepSpeed {res.deepspeed.upper() if res.deepspeed in ('zero2', 'zero3') else res.deepspeed}"
            if res.deepspeed != "none"
            else ("DDP/nccl" if res.use_gpu else "DDP/gloo")
        )
        why = "" if res.launcher == "ray_train" else f"; not in the trial's process: it needs {res.in_trial_refusal()}"
        where = (
            f"Ray Train TorchTrainer, {res.num_workers} worker(s) x ({res.cpus_per_worker:g} CPU"
            + (f", {res.gpus_per_worker:g} GPU" if res.use_gpu else "")
            + f"), {engine}"
            + (f", checkpoint every {res.checkpoint_every} steps" if res.checkpoint_every else "")
            + (f", {res.max_failures} restart(s)" if res.max_failures else "")
            + why
        )
    loads = model_loads(run)
    return f"per trial: {where}; base-model loads: {sum(loads.values())} ({', '.join(f'{k} {v}' for k, v in loads.items())})"


def model_loads(run: RunConfig) -> dict[str, int]:
    """How many times one trial reads the base model: each training worker once per fine-tune, each
    evaluation once (HF generate in its process, or the vLLM server it starts; none when it reaches a
    running server at ``eval.vllm.url``, which hot-loads the trial's adapter)."""
    res, vllm = run.resources, run.eval.vllm
    per_eval = 0 if (run.eval.generator == "vllm" and vllm.url) else 1
    loads = {"fine-tune": res.num_workers, "evaluation": per_eval}
    if run.benign is not None:
        loads.update({"benign fine-tune": res.num_workers, "benign evaluation": per_eval})
    return loads
