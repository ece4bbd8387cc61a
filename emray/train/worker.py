"""The Ray Train worker loop: one LoRA fine-tune across the workers of a TorchTrainer.

On CPU the workers form a gloo process group (DDP); with ``resources.deepspeed`` the HF Trainer
runs DeepSpeed ZeRO-2 or ZeRO-3. Rank 0 writes the run folder and reports it as the checkpoint
(Ray Train V2 only forwards metrics to Tune from a report that carries a checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path

from emray.config import RunConfig
from emray.train.deepspeed import deepspeed_config
from emray.train.sft import check_finite, train_run, write_run_folder


def train_loop_per_worker(loop_config: dict) -> None:
    """The recipe (``train_run``) plus what a worker adds: rank-0 saving and reporting."""
    import ray.train

    from emray.sweep.live import trial_output

    out_dir = Path(loop_config["out_dir"])
    # A sweep trial's worker output goes to SWEEP_DIR/logs/<key>.log (emray/sweep/live.py).
    with trial_output(out_dir):
        _train_loop(loop_config, out_dir)


def _train_loop(loop_config: dict, out_dir: Path) -> None:
    import ray.train

    from emray.sweep.live import live_callbacks

    config = RunConfig.model_validate(loop_config["run_config"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    ds = deepspeed_config(config.resources.deepspeed)
    trained = train_run(
        config,
        out_dir,
        loop_config.get("artifacts") or {},
        # rank 0: step / total for the live table, the W&B curve as it trains
        callbacks=live_callbacks(out_dir, rank),
        deepspeed=ds,
        disable_tqdm=rank != 0 or not config.train.progress,
        # Ray sets up torch.distributed; the Trainer must not try to launch its own.
        ddp_backend="nccl" if config.resources.use_gpu else "gloo",
    )
    trainer, history = trained.trainer, trained.history
    metrics = {**trained.metrics, "world_size": context.get_world_size()}
    checkpoint = None
    if rank == 0:
        # Under ZeRO-3 the Trainer gathers the sharded adapter; elsewhere the model is whole on rank 0.
        to_save = trainer.accelerator.unwrap_model(trainer.model)
        result = write_run_folder(config, out_dir, to_save, trained.tokenizer, history, metrics)
        metrics.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
        checkpoint = ray.train.Checkpoint.from_directory(str(result.adapter_dir))
    elif ds and ds["zero_optimization"]["stage"] == 3:
        trainer.accelerator.unwrap_model(trainer.model)  # every rank joins the gather
    check_finite(history, out_dir / "metrics.json")  # every rank: the logged loss is the all-rank mean
    ray.train.report(metrics, checkpoint=checkpoint)
    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)


def fit_with_ray_train(config: RunConfig, out_dir: Path, storage_path: str, artifacts: dict | None = None, callbacks=()):
    """Run ``train_loop_per_worker`` on a TorchTrainer sized by ``config.resources``."""
    from ray.train import FailureConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = config.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run_config": config.model_dump(mode="json", by_alias=True), "out_dir": str(out_dir), "artifacts": artifacts or {}},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        run_config=TrainRunConfig(
            name=f"train-{out_dir.name}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=0),
            callbacks=list(callbacks),
        ),
    )
    return trainer.fit()
