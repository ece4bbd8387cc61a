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

import time
from collections.abc import Sequence
from pathlib import Path

from trl import SFTTrainer

from emray.config import RunConfig
from emray.data.training import load_training_examples
from emray.defenses import Defense, DefenseContext, build_defenses
from emray.defenses.losses import DefenseBatch
from emray.train.common import (
    TrainedRun,
    TrainResult,
    apply_data_defenses,
    common_trainer_args,
    finish_run,
    seed_everything,
    set_threads,
    train_with_defenses,
)


class DefendedSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss adds the loss-lever defenses' terms (KL, LDIFS, ...)."""

    def __init__(self, *args, defenses: Sequence[Defense] = (), **kwargs):
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
    model = attach_lora(model, config.lora, seed=config.seed)
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


def train_model(
    config: RunConfig,
    model,
    tokenizer,
    defenses: list[Defense],
    out_dir: Path,
    callbacks=(),
    args=None,
    resume_from_checkpoint=None,
):
    """Train ``model`` in place; returns (trainer, log_history, num_examples).

    ``args`` (an SFTConfig) may be built before the model is loaded: DeepSpeed ZeRO-3 needs that so
    ``from_pretrained`` partitions the weights across ranks instead of loading them whole on each.
    """
    dataset, num_examples = prepare_dataset(config, tokenizer, defenses)
    trainer_cls = DefendedSFTTrainer
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


def train_sft_run(
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
    Scenario ``rl`` goes through emray/train/recipe.py to GRPO instead."""
    set_threads(config.train.threads)
    seed_everything(config.seed)
    started = time.time()
    # Build the training args first: with DeepSpeed ZeRO-3 this switches from_pretrained to zero.Init.
    args = build_sft_args(config, run_dir, **sft_overrides)
    model, tokenizer = prepare_model(config)
    context = DefenseContext(config=config, tokenizer=tokenizer, seed=config.seed, artifacts=artifacts or {})
    defenses = build_defenses(config.defenses, context)
    trainer, history, num_examples = train_model(
        config,
        model,
        tokenizer,
        defenses,
        run_dir,
        callbacks=callbacks,
        args=args,
        resume_from_checkpoint=resume_from_checkpoint,
    )
    metrics = {"train_seconds": round(time.time() - started, 2), "num_examples": num_examples}
    return TrainedRun(trainer, model, tokenizer, history, metrics)


def run_sft(config: RunConfig, run_dir: Path | None = None, artifacts: dict | None = None) -> TrainResult:
    """SFT-fine-tune ``config.model`` with ``config.defenses`` and write the run folder (``run_dir/adapter``):
    the RL warm start's recipe. Any scenario: ``emray.train.recipe.fine_tune``."""
    run_dir = Path(run_dir or config.run_dir())
    return finish_run(config, run_dir, train_sft_run(config, run_dir, artifacts))
