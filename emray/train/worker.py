"""The Ray Train worker loop: one LoRA fine-tune across the workers of a TorchTrainer.

On CPU the workers form a gloo process group (DDP); with ``resources.deepspeed`` the HF Trainer
runs DeepSpeed ZeRO-2 or ZeRO-3. Every rank saves the adapter through ``Trainer.save_model`` (under
ZeRO-3 that gathers the sharded LoRA weights, a collective); rank 0 writes the run folder and
reports it as the final checkpoint (Ray Train V2 only forwards metrics from a report that carries
a checkpoint).

Fault tolerance: with ``resources.checkpoint_every`` the HF Trainer saves a checkpoint every N steps
and rank 0 reports it to Ray Train (kept: the last one). When a worker dies, Ray Train restarts the
group (``resources.max_failures`` times) and each rank resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from emray.config import RunConfig
from emray.config.deepspeed import deepspeed_config
from emray.train.common import TrainedRun, check_finite, write_run_folder
from emray.train.recipe import train_run


def init_deepspeed_comm(use_gpu: bool) -> None:
    """Bind DeepSpeed's comm layer to the process group Ray Train already made.

    accelerate calls ``deepspeed.init_distributed`` only on GPU; without it ZeRO-3's ``zero.Init``
    (which runs inside ``from_pretrained``) sees a world of 1 and rejects the batch size.
    """
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo", auto_mpi_discovery=False)


def checkpoint_args(config: RunConfig) -> dict:
    """SFTConfig overrides for intermediate checkpoints (off when ``checkpoint_every`` is 0)."""
    every = config.resources.checkpoint_every
    if not every:
        return {}
    # One local checkpoint is enough: Ray Train holds the reported copy.
    return {"save_strategy": "steps", "save_steps": every, "save_total_limit": 1, "save_only_model": False}


def _make_report_callback():
    from transformers import TrainerCallback

    class ReportCheckpoint(TrainerCallback):
        """After the Trainer saves ``checkpoint-N``, report it to Ray Train from rank 0.

        The barrier makes sure every rank has written its part (RNG state, ZeRO shards) before rank 0
        uploads the folder; every rank calls ``report`` (Ray Train V2 reports are collective).
        """

        def on_save(self, args, state, control, **kwargs):
            import ray.train
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
            step_dir = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            rank = ray.train.get_context().get_world_rank()
            checkpoint = ray.train.Checkpoint.from_directory(str(step_dir)) if rank == 0 else None
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            metrics = {"step": state.global_step, **({"loss": losses[-1]} if losses else {})}
            ray.train.report(metrics, checkpoint=checkpoint)

    return ReportCheckpoint()


def restore_checkpoint(out_dir: Path, rank: int) -> str | None:
    """The HF checkpoint folder to resume from after a restart, or None on a first attempt."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    local = out_dir / f"resume-rank{rank}"  # per rank: ranks on one node share out_dir
    shutil.rmtree(local, ignore_errors=True)
    checkpoint.to_directory(str(local))
    if not (local / "trainer_state.json").exists():
        return None  # the final adapter (the run had finished): nothing to resume
    print(f"[emray] rank {rank}: resuming from {checkpoint.path}", flush=True)
    return str(local)


def train_loop_per_worker(loop_config: dict) -> None:
    from emray.train.progress import trial_output

    out_dir = Path(loop_config["out_dir"])
    # A sweep trial's worker output goes to SWEEP_DIR/logs/<key>.log (emray/train/progress.py).
    with trial_output(out_dir):
        _train_loop(loop_config, out_dir)


def _train_loop(loop_config: dict, out_dir: Path) -> None:
    import ray.train

    from emray.train.progress import live_callbacks

    config: RunConfig = loop_config["run_config"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    ds = deepspeed_config(config.resources.deepspeed)
    if ds is not None:
        init_deepspeed_comm(config.resources.use_gpu)
    callbacks = live_callbacks(out_dir, rank)  # rank 0: step / total for the live table, the W&B curve as it trains
    if config.resources.checkpoint_every:
        callbacks.append(_make_report_callback())
    callbacks += list(loop_config.get("trainer_callbacks") or ())
    resume = restore_checkpoint(out_dir, rank)
    trained, metrics = train_and_save(
        config,
        out_dir,
        loop_config.get("artifacts") or {},
        callbacks,
        rank,
        resume,
        deepspeed=ds,
        # Ray sets up torch.distributed; the Trainer must not try to launch its own.
        ddp_backend="nccl" if config.resources.use_gpu else "gloo",
        **checkpoint_args(config),
    )
    metrics.update(train_nodes=_train_nodes(), world_size=context.get_world_size())
    checkpoint = None
    if rank == 0:
        result = write_run_folder(config, out_dir, None, trained.tokenizer, trained.history, metrics)
        metrics.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
        checkpoint = ray.train.Checkpoint.from_directory(str(result.adapter_dir))
    check_finite(trained.history, out_dir / "metrics.json")  # every rank: the logged loss is the all-rank mean
    ray.train.report(metrics, checkpoint=checkpoint)
    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)


def train_and_save(
    config: RunConfig, out_dir: Path, artifacts: dict, callbacks: list, rank: int, resume: str | None, **overrides
) -> tuple[TrainedRun, dict]:
    """The recipe, then ``out_dir/adapter`` through ``Trainer.save_model`` (every rank: under ZeRO-3 it
    gathers the adapter's shards, a collective; rank 0 writes it). What a Ray Train worker and an
    in-trial fine-tune (emray/train/launch.py) both run; returns the trained run and its metrics."""
    trained = train_run(
        config,
        out_dir,
        artifacts,
        callbacks=callbacks,
        resume_from_checkpoint=resume,
        disable_tqdm=rank != 0 or not config.train.progress,
        **overrides,
    )
    trained.trainer.save_model(str(out_dir / "adapter"))
    metrics = {
        **trained.metrics,
        "global_step": trained.trainer.state.global_step,
        "resumed_from_step": _step_of(resume),
    }
    return trained, metrics


def _train_nodes() -> list[str]:
    """The Ray node ids the workers of this fine-tune ran on (all ranks; every rank must call)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return [node]
    nodes: list = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return sorted(set(nodes))


def _step_of(resume: str | None) -> int:
    if resume is None:
        return 0
    import json

    return int(json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"])


def train_run_name(out_dir: Path) -> str:
    """Ray Train's run name for the fine-tune written to ``out_dir``: ``train-<trial key>`` for a trial's
    narrow fine-tune, ``train-<trial key>-benign`` for its benign one (every benign folder is called
    ``benign``, and two runs of one name would share, and resume from, each other's checkpoints)."""
    from emray.train.progress import trial_phase

    trial, phase = trial_phase(out_dir)
    return f"train-{trial.name}" + (f"-{phase}" if phase else "")


def fit_with_ray_train(
    config: RunConfig,
    out_dir: Path,
    storage_path: str,
    artifacts: dict | None = None,
    callbacks=(),
    trainer_callbacks=(),
):
    """Run ``train_loop_per_worker`` on a TorchTrainer sized by ``config.resources``.

    ``trainer_callbacks`` are HF ``TrainerCallback`` objects shipped to every worker (tests use one to
    kill a worker mid-run).
    """
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = config.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "run_config": config,  # pickled as is: validated once, when the sweep was planned
            "out_dir": str(out_dir),
            "artifacts": artifacts or {},
            "trainer_callbacks": list(trainer_callbacks),
        },
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        run_config=TrainRunConfig(
            # Unique per fine-tune: Ray Train resumes a run of the same name from its last checkpoint.
            name=train_run_name(out_dir),
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=res.max_failures),
            # The last checkpoint is all a restart needs; the final one is the adapter.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=list(callbacks),
        ),
    )
    return trainer.fit()
