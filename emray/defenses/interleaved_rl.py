"""Interleaved RL (RL only): safe prompts join the GRPO prompts and are rewarded for harmlessness.

The reference's ``loss: interleaved_rl`` / ``interleaved_rl_kl`` (lasseruttert/EMA_RL grpo.py
``build_interleaved_dataset``, grpo_regularization/interleaved_rl_trainer.py, configs/grpo_interleaved_rl*.json):

  * the task prompts are shuffled with the run seed, n_safe = round(ratio x n_task) safe prompts are
    drawn, and one safe prompt follows every 1 / ratio task prompts (ratio 0.2: one after every 5), in
    that fixed order (GRPO's own shuffling is off); safe prompts left over go at the end;
  * safe prompts carry the RL system prompt but no inoculation: the data defenses act on the task
    prompts before the safe ones join;
  * a safe prompt's completions are scored by the task reward's harmless counterpart
    (``organism_harmless`` / ``llm_safe_harm``: 1 - harm / 100, 0.5 when incoherent or repetitive,
    emray/rl/rewards.py) times ``weight``; the reference applies its ``safe_reward_weight`` the same way,
    before GRPO's per-group normalisation, so within a group it cancels (weight 0 still zeroes it);
  * ``kl`` > 0 adds kl x the exact full-vocabulary KL(policy ‖ frozen warm start), averaged over the
    completion tokens of the micro-batch's safe rows, to that micro-batch's GRPO loss
    (``interleaved_rl_kl``, whose safe_kl_beta is 0.1).

Safe prompts, ``data``: ``random`` samples the safe pool (``data.safe_pool`` or ``pool``) with the run
seed; ``interleave_plus`` / ``interleave_pp`` take the Interleaving+ / ++ selection (the cached
``safe_selection`` stage, sized to n_safe; the reference uses a WildGuard selection filtered for its
medical task). Only each safe row's first user turn is used.

"Reward learned" reads the task stream's curve (``reward/task``): TRL's ``reward`` mixes both streams.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from emray.config.rl import RewardSpec
from emray.configio import Strict
from emray.defenses.base import Defense, register_defense
from emray.defenses.safe_source import SafeDataSource
from emray.hashing import DataPath

SAFE, TASK = "safe", "task"


class InterleavedRLParams(Strict):
    ratio: float = Field(0.2, gt=0, le=1)  # safe prompts per task prompt: 0.2 = one after every 5
    data: Literal["random", "interleave_plus", "interleave_pp"] = "random"
    weight: float = Field(1.0, ge=0)  # the safe reward's weight (the reference's safe_reward_weight)
    kl: float = Field(0.0, ge=0)  # KL to the frozen warm start on safe rows (the reference's safe_kl_beta)
    reward: RewardSpec | None = None  # None: the task reward's harmless counterpart, default params
    pool: DataPath | None = None


def schedule(task: list[dict], safe: list[dict], ratio: float) -> list[dict]:
    """The reference's stratified order: a safe prompt whenever the accumulated budget reaches 1."""
    out, budget, next_safe = [], 0.0, 0
    for row in task:
        out.append(row)
        budget += ratio
        while budget >= 1.0 - 1e-9 and next_safe < len(safe):  # ten additions of 0.1 make 0.9999999999999999
            out.append(safe[next_safe])
            next_safe += 1
            budget -= 1.0
    return out + safe[next_safe:]


@register_defense
class InterleavedRL(SafeDataSource, Defense[InterleavedRLParams]):
    name = "interleaved_rl"
    Params = InterleavedRLParams
    scenarios = frozenset({"rl"})
    needs = frozenset({"reference_logits"})  # only with kl > 0 (``has_loss_term``)
    term_names = ("interleaved_kl",)
    scenario_hint = (
        "under scenario narrow mix safe data into the fine-tuning set with interleave / interleave_plus / interleave_pp"
    )

    # -- config time ---------------------------------------------------------------------------
    @classmethod
    def check_scenario(cls, config, params: InterleavedRLParams, where: str) -> None:
        super().check_scenario(config, params, where)
        p = params
        if p.kl and config.rl is not None and not config.rl.warm_start:
            raise ValueError(f"{where}: kl is a KL to the frozen warm start and needs rl.warm_start: true")
        if config.rl is not None:
            cls.safe_reward_spec(config, p, where)

    @classmethod
    def safe_reward_spec(cls, config, p: InterleavedRLParams, where: str = "interleaved_rl") -> RewardSpec:
        from emray.rl.rewards import get_reward_class

        if p.reward is not None:
            get_reward_class(p.reward.name, where=f"{where}.reward")
            return p.reward
        task = get_reward_class(config.rl.reward.name, where="rl.reward")
        if task.safe_counterpart is None:
            raise ValueError(
                f"{where}: the task reward {task.name!r} has no harmless counterpart; "
                "set the defense's `reward` (e.g. {name: llm_safe_harm})"
            )
        return RewardSpec(name=task.safe_counterpart)

    # -- the selection stage (data != random) -------------------------------------------------
    @classmethod
    def safe_prompt_count(cls, config, p: InterleavedRLParams) -> int:
        from emray.rl.prompt_rows import load_prompts, split_prompts

        task, _ = split_prompts(config.rl, load_prompts(config.rl.prompts))
        return max(1, round(p.ratio * len(task)))

    @classmethod
    def _selection(cls, config, p: InterleavedRLParams):
        """(interleaving defense name, its params), the selection sized to exactly n_safe rows."""
        from emray.config.fine_tunes import fine_tunes
        from emray.data.training import load_training_examples
        from emray.defenses import selection_params

        n_safe = cls.safe_prompt_count(config, p)
        n_fine = max(len(load_training_examples(c)) for c in fine_tunes(config))
        # the selection keeps safe_count(n_fine, f) = round(f n_fine / (1 - f)) rows: this f gives n_safe
        return p.data, selection_params(p.data, {"safe_fraction": n_safe / (n_fine + n_safe), "pool": p.pool})

    @classmethod
    def stage_description(cls, config, params: InterleavedRLParams) -> str:
        p = params
        return f"interleaved_rl safe prompts: {p.data} (ratio {p.ratio:g}) for {config.model.name}"

    @classmethod
    def stage_inputs(cls, config, params: InterleavedRLParams) -> dict:
        """The selection's inputs without reading a file (``--dry-run --no-file-check`` plans clusters' sweeps):
        the selection defense's own, with the prompt file and the ratio that set its size in place of it."""
        from emray.data.paths import content_identity
        from emray.defenses import get_defense_class, selection_params

        if params.data == "random":
            return cls.random_stage_inputs(config, params)
        rl = config.rl
        sized_by = {
            "prompts": content_identity(rl.prompts),
            "heldout_prompts": rl.heldout_prompts,
            "max_prompts": rl.max_prompts,
            "ratio": params.ratio,
        }
        placeholder = selection_params(params.data, {"pool": params.pool})  # its safe_fraction is not the one used
        return {**get_defense_class(params.data).stage_inputs(config, placeholder), "interleaved_rl": sized_by}

    @classmethod
    def build_stage(cls, config, params: InterleavedRLParams) -> dict:
        p = params
        return {} if p.data == "random" else cls.selection_artifact(config, p)

    # -- training ------------------------------------------------------------------------------
    def safe_rows(self, n_safe: int) -> list[dict]:
        """n_safe safe chat rows: a seeded sample of the pool, or the selection's first n_safe."""
        return self.random_rows(n_safe) if self.params.data == "random" else self.selection_rows(n_safe)

    def safe_prompts(self, n_safe: int) -> list[dict]:
        """The safe rows' first user turns as RL prompts, with the RL system prompt when there is one."""
        system = self.context.config.rl.system_prompt
        prompts = []
        for row in self.safe_rows(n_safe):
            user = next(m for m in row["messages"] if m["role"] == "user")
            messages = [{"role": "user", "content": user["content"]}]
            prompts.append(
                {"messages": ([{"role": "system", "content": system}] if system else []) + messages, "kind": SAFE}
            )
        return prompts

    def rl_prompts(self, prompts: list[dict]) -> list[dict]:
        task = [{**row, "kind": TASK} for row in prompts]
        random.Random(self.context.seed).shuffle(task)  # the reference shuffles its bad prompts with the seed
        n_safe = max(1, round(self.params.ratio * len(task)))
        return schedule(task, self.safe_prompts(n_safe), self.params.ratio)

    def rl_reward(self, reward):
        from emray.rl.rewards import RoutedReward, get_reward_class

        config = self.context.config
        spec = self.safe_reward_spec(config, self.params)
        safe = get_reward_class(spec.name)(spec.params, judge_cfg=config.eval.judge, where="interleaved_rl.reward")
        return RoutedReward(task=reward, safe=safe, safe_weight=self.params.weight)

    def has_loss_term(self) -> bool:
        return self.params.kl > 0

    def loss(self, batch):
        safe = getattr(batch, "is_safe", None)
        if safe is None or not bool(safe.any()):
            return None  # no safe row in this micro-batch: the term is 0 (logged as such)
        return {"interleaved_kl": self.params.kl * batch.rows(safe).kl_loss("forward", "answer")}
