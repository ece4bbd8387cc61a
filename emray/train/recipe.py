"""The one entry to training: a run's scenario picks the recipe (SFT for ``narrow`` and ``benign``,
an SFT warm start then GRPO for ``rl``); both share emray/train/common.py. ``emray train``, the sweep's
Ray Train worker, the misaligned ensemble and the organism's study all train through here."""

from __future__ import annotations

from pathlib import Path

from emray.config import RunConfig
from emray.train.common import TrainedRun, TrainResult, finish_run
from emray.train.grpo import train_grpo_run
from emray.train.sft import train_sft_run


def train_run(
    config: RunConfig,
    run_dir: Path,
    artifacts: dict | None = None,
    callbacks=(),
    resume_from_checkpoint: str | None = None,
    **sft_overrides,
) -> TrainedRun:
    """The recipe, up to a trained model in memory. ``sft_overrides`` go to the SFTConfig (the Ray
    Train worker: DeepSpeed, the DDP backend, progress bars on rank 0 only, checkpointing);
    ``callbacks`` are Trainer callbacks (the worker's live progress, checkpoint reports);
    ``resume_from_checkpoint`` an HF checkpoint folder to continue from (a restarted worker).
    ``scenario: rl``: the SFT warm start (cached) then GRPO (emray/train/grpo.py)."""
    recipe = train_grpo_run if config.scenario == "rl" else train_sft_run
    return recipe(config, run_dir, artifacts, callbacks, resume_from_checkpoint, **sft_overrides)


def fine_tune(config: RunConfig, run_dir: Path | None = None, artifacts: dict | None = None) -> TrainResult:
    """Fine-tune ``config.model`` with ``config.defenses`` by the run's scenario and write the run folder
    (``run_dir/adapter``). A non-finite loss raises FloatingPointError after the folder is written."""
    run_dir = Path(run_dir or config.run_dir())
    return finish_run(config, run_dir, train_run(config, run_dir, artifacts))
