"""LoRA SFT with defenses, through TRL's SFTTrainer: the one training recipe.

``train_run(config, ...)`` is the recipe: threads and seeds, training args, load model, attach
rs-LoRA, let the defenses rewrite the data and hook the model, tokenize with assistant-only labels,
train, and refuse a non-finite loss. ``run_sft(config)`` (``emray train``, the misaligned ensemble,
the organism's fine-tunes) adds writing the run folder (adapter/, config.yaml, metrics.json); the
Ray Train worker (emray/train/worker.py) adds only rank handling and reporting.

Loss normalisation: the undefended and the defended branch both follow transformers' rule for a
model that accepts ``num_items_in_batch``: a micro-batch contributes its summed per-token loss
divided by the answer tokens of the whole optimizer step (all accumulation steps, all workers), so
``kl`` with λ = 0 trains exactly like ``none`` with gradient accumulation and several workers.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emray.config import RunConfig
from emray.configio import dump_yaml
from emray.defenses import Defense, DefenseContext, build_defenses


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


def load_training_examples(config: RunConfig) -> list[dict]:
    """The rows this fine-tune trains on before the data defenses: the customer's narrow data, or for a
    trial's benign fine-tune (``scenario: benign``, emray/train/benign.py) the benign tasks."""
    from emray.data.chat import load_chat_jsonl

    if config.scenario == "benign":
        from emray.train.benign import training_examples

        return training_examples(config)
    return load_chat_jsonl(config.data.fine, limit=config.data.max_examples)


def apply_data_defenses(defenses: list[Defense], examples: list[dict]) -> list[dict]:
    for defense in defenses:
        examples = defense.transform_examples(examples)
    return examples


def _make_trainer_class():
    from trl import SFTTrainer

    from emray.train.losses import DefenseBatch

    class DefendedSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss adds the loss-lever defenses' terms (KL, LDIFS, ...)."""

        def __init__(self, *args, defenses: list[Defense] = (), **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_defenses = [d for d in defenses if d.has_loss_term()]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.loss_defenses or not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            layers = sorted({i for d in self.loss_defenses for i in d.hidden_layers(model)})
            chunks = [c for d in self.loss_defenses if (c := d.head_chunk_tokens())]
            batch = DefenseBatch(model, inputs, hidden_layers=layers, **({"chunk_tokens": min(chunks)} if chunks else {}))
            terms: dict = {}
            for defense in self.loss_defenses:
                terms.update(defense.loss(batch) or {})
            ce = batch.ce_loss()  # after the terms: a KL term computes CE in the same pass over the LM head
            loss = ce + sum(terms.values())
            weight = self.microbatch_weight(batch.num_answer_tokens, num_items_in_batch)
            # Components are logged as the mean of the micro-batch entries: scaled like the loss, so
            # the logged loss stays the sum of its logged parts.
            log_scale = float(weight) * self.current_gradient_accumulation_steps if weight is not None else 1.0
            self._metrics["train"]["loss_ce"].append(ce.item() * log_scale)
            for name, value in terms.items():
                self._metrics["train"][f"loss_{name}"].append(value.item() * log_scale)
            if weight is not None:
                loss = loss * weight
            return (loss, None) if return_outputs else loss

        def microbatch_weight(self, tokens: int, num_items_in_batch):
            """What turns this micro-batch's per-token mean into its share of the step's loss.

            Mirrors Trainer.compute_loss for the undefended branch: with ``num_items_in_batch`` (the
            step's answer tokens over all accumulation steps and, by default, all workers) the loss is
            sum / num_items, times the number of processes (DDP then averages the gradients), and
            training_step does not divide by the accumulation steps; without it, the loss is a
            per-micro-batch mean and training_step divides by them itself.
            """
            if num_items_in_batch is None or not (self.model_accepts_loss_kwargs or self.compute_loss_func):
                return None  # per-micro-batch mean; training_step divides by the accumulation steps
            weight = tokens / num_items_in_batch
            if self.args.average_tokens_across_devices:
                weight = weight * (self.accelerator.num_processes // self.get_tp_size())
            return weight

    return DefendedSFTTrainer


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


def build_sft_args(config: RunConfig, out_dir: Path, **overrides):
    from trl import SFTConfig

    args = dict(
        common_trainer_args(config, out_dir),
        per_device_train_batch_size=config.train.batch_size,
        gradient_accumulation_steps=config.train.grad_accum,
        learning_rate=config.train.lr,
        num_train_epochs=config.train.epochs,
        max_steps=config.train.max_steps,
        lr_scheduler_type=config.train.lr_scheduler,
        warmup_steps=config.train.warmup_steps,
        weight_decay=config.train.weight_decay,
        logging_steps=config.train.logging_steps,
        max_length=config.train.max_len,
        remove_unused_columns=False,
    )
    args.update(overrides)
    return SFTConfig(**args)


def prepare_model(config: RunConfig):
    from emray.models import attach_lora, load_model

    model, tokenizer = load_model(config.model)
    model = attach_lora(model, config.lora)
    return model, tokenizer


def prepare_dataset(config: RunConfig, tokenizer, defenses: list[Defense]):
    from datasets import Dataset

    from emray.data.chat import DataError
    from emray.data.tokenize import tokenize_examples

    examples = apply_data_defenses(defenses, load_training_examples(config))
    rows = tokenize_examples(tokenizer, examples, config.train.max_len)
    if not rows:
        source = config.data.fine if config.scenario == "narrow" else f"benign.train {config.benign.train}"
        raise DataError(f"{source}: no example has an answer token within train.max_len={config.train.max_len}")
    return Dataset.from_list(rows), len(examples)


def train_model(config: RunConfig, model, tokenizer, defenses: list[Defense], out_dir: Path, callbacks=(), args=None, resume_from_checkpoint=None):
    """Train ``model`` in place; returns (trainer, log_history, num_examples).

    ``args`` (an SFTConfig) may be built before the model is loaded: DeepSpeed ZeRO-3 needs that so
    ``from_pretrained`` partitions the weights across ranks instead of loading them whole on each.
    """
    dataset, num_examples = prepare_dataset(config, tokenizer, defenses)
    trainer_cls = _make_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args or build_sft_args(config, out_dir),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        defenses=defenses,
    )
    train_with_defenses(trainer, model, defenses, resume_from_checkpoint)
    return trainer, trainer.state.log_history, num_examples


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


def write_run_folder(config: RunConfig, run_dir: Path, model, tokenizer, history: list[dict], extra: dict) -> TrainResult:
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


def train_run(config: RunConfig, run_dir: Path, artifacts: dict | None = None, callbacks=(),
              resume_from_checkpoint: str | None = None, **sft_overrides) -> TrainedRun:
    """The recipe, up to a trained model in memory. ``sft_overrides`` go to the SFTConfig (the Ray
    Train worker: DeepSpeed, the DDP backend, progress bars on rank 0 only, checkpointing);
    ``callbacks`` are Trainer callbacks (the worker's live progress, checkpoint reports);
    ``resume_from_checkpoint`` an HF checkpoint folder to continue from (a restarted worker).
    ``scenario: rl``: the SFT warm start (this recipe, cached) then GRPO (emray/rl/trainer.py)."""
    if config.scenario == "rl":
        from emray.rl.trainer import train_grpo_run

        return train_grpo_run(config, run_dir, artifacts, callbacks, resume_from_checkpoint, **sft_overrides)
    set_threads(config.train.threads)
    seed_everything(config.seed)
    started = time.time()
    # Build the training args first: with DeepSpeed ZeRO-3 this switches from_pretrained to zero.Init.
    args = build_sft_args(config, run_dir, **sft_overrides)
    model, tokenizer = prepare_model(config)
    context = DefenseContext(config=config, tokenizer=tokenizer, seed=config.seed, artifacts=artifacts or {})
    defenses = build_defenses(config.defenses, context)
    trainer, history, num_examples = train_model(config, model, tokenizer, defenses, run_dir, callbacks=callbacks, args=args,
                                                 resume_from_checkpoint=resume_from_checkpoint)
    metrics = {"train_seconds": round(time.time() - started, 2), "num_examples": num_examples}
    return TrainedRun(trainer, model, tokenizer, history, metrics)


def run_sft(config: RunConfig, run_dir: Path | None = None, artifacts: dict | None = None) -> TrainResult:
    """Fine-tune ``config.model`` with ``config.defenses`` and write the run folder (``run_dir/adapter``).

    A non-finite loss raises FloatingPointError after the folder is written (to inspect it).
    """
    run_dir = Path(run_dir or config.run_dir())
    trained = train_run(config, run_dir, artifacts)
    result = write_run_folder(config, run_dir, trained.model, trained.tokenizer, trained.history, trained.metrics)
    check_finite(trained.history, run_dir / "metrics.json")
    return result
