"""The benign scenario: does a defense still let the model learn a benign task?

The paper's third criterion. Each trial with a ``benign`` section runs a second LoRA fine-tune from the
base model, on the benign tasks only (``benign.train``), with the trial's defenses on (KL, LDIFS,
steering, inoculation prefixes, interleaved safe data all apply to it as to the narrow fine-tune), and
scores that adapter on held-out problems (``benign.test``): exact-match accuracy per task and
``benign_accuracy``, their mean. The narrow fine-tune never sees a benign row, so a defense that blocks
learning in general shows here as low accuracy (the paper finds KL does).

``benign_run(config)`` derives that fine-tune's config; the one SFT recipe (emray/train/sft.py) reads
its training rows through ``emray.data.training.training_examples``.
"""

from __future__ import annotations

from emray.config import RunConfig


def benign_run(config: RunConfig) -> RunConfig:
    """The benign fine-tune of a narrow run: same model, LoRA, defenses and seed; the benign tasks as data,
    ``benign.max_steps``/``benign.lr`` over the train settings, evaluation on the benign test sets only."""
    if config.benign is None:
        raise ValueError("benign_run: the run config has no `benign` section")
    benign = config.benign
    train = config.train.model_copy(
        update={k: v for k, v in (("max_steps", benign.max_steps), ("lr", benign.lr)) if v is not None}
    )
    evaluation = config.eval.model_copy(
        update={"general": None, "in_domain": [], "benign": list(benign.test), "max_benign": benign.max_test}
    )
    return config.model_copy(
        update={"scenario": "benign", "name": f"{config.name}-benign", "train": train, "eval": evaluation}
    )


def fine_tunes(config: RunConfig) -> list[RunConfig]:
    """Every fine-tune a trial of ``config`` runs: the narrow one, then the benign one if configured.
    (A safe-data selection is sized for the largest of them: each takes its own first k rows.)"""
    return [config, benign_run(config)] if config.benign is not None else [config]
