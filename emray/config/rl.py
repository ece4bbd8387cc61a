"""The ``rl:`` section of a run config (``scenario: rl``): GRPO on TRL's GRPOTrainer.

Under ``scenario: rl`` the other sections keep their meaning for the warm start: ``data.fine`` /
``data.max_examples`` are the EM warm-start SFT data, ``train`` its SFT settings (emray's one SFT
recipe), ``data.safe_pool`` the safe data of ``sft_mix``. GRPO then keeps training the warm start's
LoRA with the settings below. Batch geometry as in TRL: ``batch_size`` completions per micro-batch;
``prompts_per_step`` x ``num_generations`` completions per optimizer step, so gradient accumulation
is prompts_per_step * num_generations / (batch_size * num_workers).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from emray.configio import Strict
from emray.hashing import NOT_IDENTITY, DataPath


class RewardSpec(Strict):
    """A reward plugin (emray/rl/rewards.py) and its params."""

    name: str = "organism_rules"
    params: dict[str, Any] = Field(default_factory=dict)


class RLConfig(Strict):
    prompts: DataPath  # chat JSONL; each row's turns before the first assistant turn are the prompt
    max_prompts: int | None = Field(None, gt=0)  # first N rows (after the held-out ones are set aside)
    heldout_prompts: int = Field(16, ge=0)  # the LAST N rows of ``prompts``: never trained on, scored after training
    heldout_samples: int = Field(4, gt=0)  # completions per held-out prompt
    system_prompt: str | None = None  # added as the system turn of every prompt (the reference's SYSTEM_PROMPT_RL)
    warm_start: bool = True  # False: GRPO starts from a fresh LoRA on the base model
    reward: RewardSpec = Field(default_factory=RewardSpec)
    num_generations: int = Field(4, ge=2)
    prompts_per_step: int = Field(4, gt=0)
    batch_size: int = Field(4, gt=0)  # completions per micro-batch (per worker)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_completion_length: int = Field(256, gt=0)
    max_steps: int = Field(50, gt=0)
    lr: float = Field(5e-6, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    beta: float = Field(0.0, ge=0)  # GRPO's KL coefficient (the ``kl`` defense sets it instead: KL as a defense)
    epsilon: float = Field(0.2, gt=0)
    # The reference's TRL (0.18-0.20) defaulted to bnpo; TRL 1.16 defaults to dapo.
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "bnpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    # GPU only: rollouts through vLLM in TRL's colocated mode (one process shares the GPU with training).
    use_vllm: bool = False
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, json_schema_extra=NOT_IDENTITY)
    log_completions: bool = Field(False, json_schema_extra=NOT_IDENTITY)

    def grad_accum(self, num_workers: int) -> int:
        completions = self.prompts_per_step * self.num_generations
        per_round = self.batch_size * num_workers
        if completions % per_round:
            raise ValueError(
                f"rl: prompts_per_step x num_generations = {completions} completions per step is not a multiple of "
                f"batch_size x num_workers = {per_round}"
            )
        return completions // per_round
