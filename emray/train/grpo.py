"""GRPO with defenses on TRL's GRPOTrainer: the recipe of ``scenario: rl`` (emray/train/recipe.py).

``train_grpo_run``: warm start (cached SFT, emray/train/warm_start.py) -> load it as the trainable LoRA ->
defenses -> prompts (the last ``rl.heldout_prompts`` rows set aside) -> GRPOTrainer -> reward on the
held-out prompts. Defenses act through the same ``Defense`` levers as in SFT:

  * data  (``transform_examples``) rewrites the training prompts, so inoculation is in the rollouts
    and in the loss, and never in evaluation or the held-out reward;
  * model (``attach``/``detach``) hooks the loss forward passes (persona steering; not the rollouts);
  * loss  (``loss``) adds terms to each micro-batch's GRPO loss, divided by the accumulation steps
    like TRL's own loss: LDIFS (reference: the frozen warm start, with gradient through the policy's
    features), SFT mix;
  * RL levers (``rl_prompts``, ``rl_reward``): interleaved RL adds safe prompts in a fixed order
    (GRPO's shuffling off) and routes their completions to a harmlessness reward;
  * ``kl`` is GRPO's own β (TRL's k3 estimate against the adapter-disabled model), or with
    ``reference: warm_start`` a loss term against the frozen warm start.
Every loss-lever reference forward under RL is the frozen warm start when there is one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from trl import GRPOTrainer

from emray.data.tokenize import IGNORE_INDEX
from emray.defenses import Defense, DefenseContext, build_defenses
from emray.defenses.losses import (
    DefenseBatch,
    completion_predicting,
    reference_pass,
    rollout_pass,
    steering_positions,
)
from emray.rl.prompt_rows import load_prompts, split_prompts, with_system


def prompt_sets(config, defenses: list[Defense]) -> tuple[list[dict], list[dict]]:
    """(training prompts with the data defenses and then the RL prompt levers applied, held-out
    prompts without either)."""
    from emray.train.common import apply_data_defenses

    rl = config.rl
    train, heldout = split_prompts(rl, load_prompts(rl.prompts))
    train = apply_data_defenses(defenses, with_system(rl, train))
    for defense in defenses:
        train = defense.rl_prompts(train) or train
    return train, with_system(rl, heldout)


def fixed_prompt_order(defenses: list[Defense]) -> bool:
    """True when a defense orders the GRPO prompts itself (TRL must not shuffle them)."""
    return any(type(d).rl_prompts is not Defense.rl_prompts for d in defenses)


def training_dataset(prompts: list[dict]):
    """The GRPO dataset: ``prompt`` and ``kind`` ("task" unless a defense added other prompts)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["messages"], "kind": r.get("kind", "task")} for r in prompts])


def training_reward(defenses: list[Defense], reward):
    """The task reward as the RL reward levers wrap it."""
    for defense in defenses:
        reward = defense.rl_reward(reward)
    return reward


def grpo_args(config, out_dir: Path, defenses: list[Defense], **overrides):
    from trl import GRPOConfig

    from emray.train.common import common_trainer_args, runs_on_gpu

    rl = config.rl
    beta = next((b for d in defenses if (b := d.rl_beta()) is not None), rl.beta)
    args = dict(
        common_trainer_args(config, out_dir),
        per_device_train_batch_size=rl.batch_size,
        gradient_accumulation_steps=rl.grad_accum(config.resources.num_workers),
        learning_rate=rl.lr,
        max_steps=rl.max_steps,
        lr_scheduler_type=rl.lr_scheduler,
        warmup_steps=math.ceil(rl.warmup_ratio * rl.max_steps),
        weight_decay=rl.weight_decay,
        logging_steps=1,  # the reward curve, every step
        num_generations=rl.num_generations,
        temperature=rl.temperature,
        top_p=rl.top_p,
        max_completion_length=rl.max_completion_length,
        beta=beta,
        epsilon=rl.epsilon,
        loss_type=rl.loss_type,
        scale_rewards=rl.scale_rewards,
        log_completions=rl.log_completions,
        shuffle_dataset=not fixed_prompt_order(defenses),
    )
    if rl.use_vllm:
        if not runs_on_gpu(config):
            raise ValueError("rl.use_vllm needs a GPU (TRL's colocated vLLM); on CPU rollouts use HF generate")
        args.update(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=rl.vllm_gpu_memory_utilization)
    args.update(overrides)
    return GRPOConfig(**args)


class RLDefenseBatch(DefenseBatch):
    """A GRPO micro-batch as a DefenseBatch: prompt + completion, answer = completion tokens;
    the reference forward is the frozen warm start when there is one (else adapter disabled)."""

    def __init__(self, model, inputs, reference_model=None, **kwargs):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels[:, : inputs["prompt_ids"].shape[1]] = IGNORE_INDEX
        super().__init__(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, **kwargs)
        self.inputs, self.kwargs = inputs, kwargs
        self.reference_model = reference_model
        self.is_safe = inputs.get("is_safe")  # [B] bool: interleaved RL's safe rows

    def rows(self, keep):
        """The same micro-batch restricted to the rows where ``keep`` ([B] bool) is true."""
        sub = {
            k: v[keep]
            for k, v in self.inputs.items()
            if k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "is_safe")
        }
        return RLDefenseBatch(self.model, sub, self.reference_model, **self.kwargs)

    def _forward(self, reference: bool):
        if not reference or self.reference_model is None:
            return super()._forward(reference)
        policy_model, self.model = self.model, self.reference_model
        try:
            with torch.no_grad(), reference_pass():
                return super()._forward(False)
        finally:
            self.model = policy_model


class DefendedGRPOTrainer(GRPOTrainer):
    def __init__(self, *args, defenses: Sequence[Defense] = (), reference_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_defenses = [d for d in defenses if d.has_loss_term()]
        self.reference_model = reference_model

    def _generate_and_score_completions(self, inputs):
        with rollout_pass():  # training-only hooks (persona steering) stay out of the rollouts
            output = super()._generate_and_score_completions(inputs)
        kinds = [example.get("kind", "task") for example in inputs]
        if "safe" in kinds:
            if len(kinds) != len(output["completion_ids"]):
                raise RuntimeError(
                    f"interleaved RL: {len(kinds)} prompt kinds for {len(output['completion_ids'])} completions"
                )
            # a per-row tensor: TRL shuffles and splits it into micro-batches with the rest
            output["is_safe"] = torch.tensor([k == "safe" for k in kinds], device=output["completion_ids"].device)
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # persona `positions: completion`: TRL's loss forward runs on cat(prompt, completion) in one chunk
        with steering_positions(completion_predicting(inputs["prompt_mask"], inputs["completion_mask"])):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self.loss_defenses or not model.training:
            return loss
        layers = sorted({i for d in self.loss_defenses for i in d.hidden_layers(model)})
        batch = RLDefenseBatch(model, inputs, self.reference_model, hidden_layers=layers)
        terms: dict = {}
        for defense in self.loss_defenses:
            terms.update(defense.loss(batch) or {})
        for name in {n for d in self.loss_defenses for n in d.term_names} - set(terms):
            self._metrics["train"][f"loss_{name}"].append(0.0)
        for name, value in terms.items():
            self._metrics["train"][f"loss_{name}"].append(value.item())
        # TRL's GRPO loss is already divided by the accumulation steps: the extra terms are too.
        return loss + sum(terms.values()) / self.current_gradient_accumulation_steps if terms else loss


#: what makes a loss term run a reference forward (under RL: the frozen warm start, when there is one)
REFERENCE_NEEDS = frozenset({"reference_logits", "reference_hidden_states"})


def frozen_warm_start(config, warm_adapter):
    """The warm-start model, merged and frozen (LDIFS's reference under RL)."""
    from emray.models import load_model

    model, _ = load_model(config.model, adapter=warm_adapter)
    model = model.merge_and_unload()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # The reference forward's hidden states go through the policy's LM head (emray/defenses/losses.py):
    # right as long as the LoRA does not train the head, which a head in lora.target_modules would.
    if any("lm_head" in str(t) for t in (config.lora.target_modules or [])):
        raise ValueError(
            "rl: a KL / LDIFS reference to the warm start needs an LM head the LoRA does not train; "
            "remove lm_head from lora.target_modules"
        )
    return model


def heldout_reward(config, model, tokenizer, reward, prompts: list[dict]) -> dict:
    """Mean reward of ``rl.heldout_samples`` sampled completions per held-out prompt (no defense)."""
    import torch

    from emray.rl.rewards import _user_text

    rl = config.rl
    if not prompts:
        return {}
    model.eval()
    device = next(model.parameters()).device
    texts = [tokenizer.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True) for p in prompts]
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = old_side
    torch.manual_seed(config.seed)
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=rl.temperature,
            top_p=rl.top_p,
            top_k=0,
            max_new_tokens=rl.max_completion_length,
            num_return_sequences=rl.heldout_samples,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    questions = [_user_text(p["messages"]) for p in prompts for _ in range(rl.heldout_samples)]
    rewards, failures = reward.score(questions, answers)
    return {
        "reward_heldout": sum(rewards) / len(rewards),
        "reward_heldout_n": len(rewards),
        "reward_heldout_parse_failures": failures,
    }


def reward_curve_summary(history: list[dict], key: str = "reward") -> dict:
    """Reward learned: mean over the last 10 % of logged steps minus the first 10 %."""
    curve = [h[key] for h in history if isinstance(h.get(key), (int, float))]
    if not curve:
        return {}
    k = max(1, round(0.1 * len(curve)))
    first, last = sum(curve[:k]) / k, sum(curve[-k:]) / k
    return {"reward_first": first, "reward_last": last, "reward_gain": last - first, "reward_steps": len(curve)}


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def train_grpo_run(
    config,
    run_dir: Path,
    artifacts: dict | None = None,
    callbacks=(),
    resume_from_checkpoint: str | None = None,
    **overrides,
):
    from peft import PeftModel

    from emray.models import attach_lora, load_model
    from emray.rl.rewards import get_reward_class
    from emray.train.common import (
        TrainedRun,
        seed_everything,
        set_threads,
        train_with_defenses,
    )
    from emray.train.warm_start import ARTIFACT, ensure_warm_start

    rl = config.rl
    set_threads(config.train.threads)
    seed_everything(config.seed)
    started = time.time()
    artifacts = dict(artifacts or {})
    warm = None
    if rl.warm_start:
        if not artifacts.get(ARTIFACT) and _world_size() > 1:
            raise RuntimeError(
                "rl: with several workers the warm start must come from the sweep's rl_warm_start stage "
                "(training it inside one rank of a process group would hang the others)"
            )
        warm = artifacts.get(ARTIFACT) or str(ensure_warm_start(config))
        artifacts[ARTIFACT] = warm
    model, tokenizer = load_model(config.model)
    model = (
        PeftModel.from_pretrained(model, warm, is_trainable=True)
        if warm
        else attach_lora(model, config.lora, seed=config.seed)
    )
    context = DefenseContext(config=config, tokenizer=tokenizer, seed=config.seed, artifacts=artifacts)
    defenses = build_defenses(config.defenses, context)
    args = grpo_args(config, run_dir, defenses, **overrides)

    train_prompts, heldout = prompt_sets(config, defenses)
    reward = get_reward_class(rl.reward.name)(rl.reward.params, judge_cfg=config.eval.judge)
    trained_reward = training_reward(defenses, reward)
    needs_reference = any(d.has_loss_term() and d.needs & REFERENCE_NEEDS for d in defenses)
    reference = frozen_warm_start(config, warm) if needs_reference and warm else None

    trainer = DefendedGRPOTrainer(
        model=model,
        reward_funcs=[trained_reward],
        args=args,
        train_dataset=training_dataset(train_prompts),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        defenses=defenses,
        reference_model=reference,
    )
    train_with_defenses(trainer, model, defenses, resume_from_checkpoint)
    history = trainer.state.log_history
    # the task stream's curve: with interleaved RL, TRL's ``reward`` averages in the safe prompts' rewards
    curve = "reward/task" if trained_reward is not reward else "reward"
    metrics = {
        "train_seconds": round(time.time() - started, 2),
        "num_examples": len(train_prompts),
        "warm_start": warm,
        **reward_curve_summary(history, curve),
        "reward_parse_failures": trained_reward.parse_failures,
    }
    if trainer.accelerator.is_main_process:
        metrics.update(heldout_reward(config, model, tokenizer, reward, heldout))
    return TrainedRun(trainer, model, tokenizer, history, metrics)
