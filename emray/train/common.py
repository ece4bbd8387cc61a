"""What both training recipes share (SFT in emray/train/sft.py, GRPO in emray/train/grpo.py):
threads and seeds, the transformers arguments they have in common, the defenses' model levers around
``trainer.train``, and the run folder (adapter/, config.yaml, metrics.json) with its finite-loss check.
emray/train/recipe.py picks the recipe for a run's scenario."""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emray.config import RunConfig
from emray.configio import dump_yaml
from emray.defenses import Defense


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    metrics: dict[str, Any]
    log_history: list[dict] = field(default_factory=list)


def set_threads(threads: int | None) -> None:
    import torch

    if threads and not torch.cuda.is_available():
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def apply_data_defenses(defenses: list[Defense], examples: list[dict]) -> list[dict]:
    for defense in defenses:
        examples = defense.transform_examples(examples)
    return examples


def runs_on_gpu(config: RunConfig) -> bool:
    import torch

    return torch.cuda.is_available() and config.model.device != "cpu"


def resolve_optim(optim: str | None, on_gpu: bool) -> str | None:
    """``train.optim`` as transformers takes it: ``adamw_8bit`` only on a CUDA GPU with bitsandbytes
    installed; otherwise ``adamw_torch``, with a message (a CPU run of a GPU recipe still trains)."""
    if optim != "adamw_8bit":
        return optim
    import importlib.util

    if on_gpu and importlib.util.find_spec("bitsandbytes") is not None:
        return optim
    why = "no CUDA GPU" if not on_gpu else "bitsandbytes is not installed (pip install 'emray[gpu]')"
    print(f"[emray] train.optim adamw_8bit: {why}; training with adamw_torch instead", flush=True)
    return "adamw_torch"


def common_trainer_args(config: RunConfig, out_dir: Path) -> dict:
    """The transformers TrainingArguments every emray trainer shares (SFT and GRPO): precision, device,
    seeds, the optimizer, no trainer-side checkpoints or reporting (emray's callbacks do both), no NaN filtering."""
    on_gpu = runs_on_gpu(config)
    optim = resolve_optim(config.train.optim, on_gpu)
    return dict(
        **({"optim": optim} if optim else {}),
        output_dir=str(out_dir / "trainer"),
        gradient_checkpointing=config.train.gradient_checkpointing,
        bf16=config.train.bf16 if config.train.bf16 is not None else on_gpu,  # TRL's bf16 default is slow on CPU
        fp16=False,
        use_cpu=not on_gpu,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="no",
        report_to="none",
        disable_tqdm=not config.train.progress,
        logging_nan_inf_filter=False,  # a diverged loss must show in the history, never be averaged away
        dataloader_num_workers=0,
    )


def train_with_defenses(trainer, model, defenses: list[Defense], resume_from_checkpoint=None) -> None:
    """``trainer.train`` with the defenses' model levers attached around it (SFT and GRPO alike)."""
    for defense in defenses:
        defense.attach(model)
    try:
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        # Steering hooks are for training only: evaluation and the saved adapter never see them.
        for defense in reversed(defenses):
            defense.detach(model)


def summarize_history(history: list[dict]) -> dict[str, Any]:
    steps = [h for h in history if "loss" in h]
    final = history[-1] if history else {}
    summary = {k: v for k, v in final.items() if isinstance(v, (int, float))}
    if steps:
        summary["first_loss"] = steps[0]["loss"]
        summary["last_loss"] = steps[-1]["loss"]
    return summary


def write_run_folder(
    config: RunConfig, run_dir: Path, model, tokenizer, history: list[dict], extra: dict
) -> TrainResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    adapter_dir = run_dir / "adapter"
    if model is not None:  # None: the caller saved the adapter (Trainer.save_model, ZeRO-aware)
        model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    (run_dir / "config.yaml").write_text(dump_yaml(config))
    metrics = {**summarize_history(history), **extra}
    (run_dir / "metrics.json").write_text(json.dumps({"summary": metrics, "history": history}, indent=2))
    return TrainResult(run_dir, adapter_dir, metrics, history)


def check_finite(history: list[dict], where: Path) -> None:
    """Raise FloatingPointError when a logged loss (or loss component) is not finite."""
    for entry in history:
        for key, value in entry.items():
            if key.startswith("loss") and isinstance(value, (int, float)) and not math.isfinite(value):
                raise FloatingPointError(f"training diverged: {key}={value} at step {entry.get('step')} ({where})")


@dataclass
class TrainedRun:
    trainer: Any
    model: Any
    tokenizer: Any
    history: list[dict]
    metrics: dict[str, Any]


def finish_run(config: RunConfig, run_dir: Path, trained: TrainedRun) -> TrainResult:
    """Write the run folder of a run trained in memory; a non-finite loss raises FloatingPointError
    after the folder is written (to inspect it)."""
    result = write_run_folder(config, run_dir, trained.model, trained.tokenizer, trained.history, trained.metrics)
    check_finite(trained.history, run_dir / "metrics.json")
    return result
