"""KL regularisation to the reference model: L = CE + λ · mean_answer_tokens KL.

The reference distribution p_ref is the same model with its LoRA adapter disabled (no second copy
of the weights), run once per step without grad. ``direction: forward`` is KL(p_θ ‖ p_ref)
(mode-seeking: penalises mass the trained model puts where the reference puts little);
``reverse`` is KL(p_ref ‖ p_θ) (mass-covering). The KL is averaged over answer tokens only
(``tokens: answer``, default) and computed together with the cross-entropy in chunks of
``chunk_tokens`` answer tokens, so no full-vocabulary float32 logits of a whole batch ever exist (see
emray/defenses/losses.py). ``tokens: sequence`` averages over every non-padding position, prompt
included, as the reference code's KL trainer does (one more chunked head pass over the prompt).
The logged ``loss_kl`` is the weighted term λ·KL.

Under ``scenario: rl`` (emray/train/grpo.py) the reference code has two KL defenses, and so does emray:
  * ``reference`` unset (base): λ becomes GRPO's β. TRL adds β times its k3 estimate of
    KL(p_θ ‖ p_ref) per sampled completion token, with the same reference as in SFT (adapter disabled,
    i.e. the base model, not the warm start: what TRL does with a peft model and what the reference's
    grpo_kl*.json ran). There is no extra loss term then: β is the whole defense.
  * ``reference: warm_start``: β stays 0 and λ times the exact full-vocabulary KL to the frozen warm
    start joins every micro-batch's GRPO loss (the reference's ``loss: kl``, grpo_kl_custom.json,
    whose KL averages over the whole sequence, prompt included: set ``tokens: sequence`` to match).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from emray.configio import Strict
from emray.defenses.base import Defense, register_defense
from emray.hashing import NOT_IDENTITY, OPTIONAL_SECTION


class KLParams(Strict):
    lam: float = Field(0.1, alias="lambda", ge=0)
    direction: Literal["forward", "reverse"] = "forward"
    chunk_tokens: int = Field(
        1024, gt=0, json_schema_extra=NOT_IDENTITY
    )  # answer tokens per LM-head chunk (memory ∝ chunk × vocab)
    # answer: mean over answer tokens (the paper's SFT objective as emray reads it); sequence: over every
    # non-padding position, prompt included, as the reference's KLTrainer (kl_divergence.py) averages.
    tokens: Literal["answer", "sequence"] = "answer"
    # scenario rl only. None: the base model (adapter disabled), as GRPO's beta; warm_start: an exact KL to
    # the frozen warm start added to the GRPO loss. Enters trial keys only when set (old keys stay valid).
    reference: Literal["warm_start"] | None = Field(None, json_schema_extra=OPTIONAL_SECTION)


@register_defense
class KL(Defense[KLParams]):
    name = "kl"
    Params = KLParams
    needs = frozenset({"reference_logits"})

    @classmethod
    def check_scenario(cls, config, params: KLParams, where: str) -> None:
        """Under RL the base-model KL is GRPO's own β term (TRL's k3 estimate of KL(p_θ ‖ p_ref) on the
        sampled completion tokens, reference = adapter disabled), so only the forward direction exists there."""
        super().check_scenario(config, params, where)
        p = params
        if p.reference == "warm_start" and config.scenario != "rl":
            raise ValueError(
                f"{where}: reference warm_start exists under scenario rl only (the SFT reference is the "
                "model being trained, adapter disabled)"
            )
        if p.reference == "warm_start" and config.rl is not None and not config.rl.warm_start:
            raise ValueError(f"{where}: reference warm_start needs rl.warm_start: true")
        if config.scenario == "rl" and p.reference is None:
            if p.direction != "forward":
                raise ValueError(
                    f"{where}: under scenario rl the KL is GRPO's beta, an estimate of KL(p_θ ‖ p_ref): "
                    "direction must be forward"
                )
            if config.rl is not None and config.rl.beta:
                raise ValueError(f"{where}: rl.beta is {config.rl.beta} and the kl defense sets beta too; set one")

    @property
    def is_grpo_beta(self) -> bool:
        """True when this KL is GRPO's β (scenario rl, base reference): TRL computes it, no loss term here."""
        config = self.context.config
        return config is not None and config.scenario == "rl" and self.params.reference is None

    def has_loss_term(self) -> bool:
        return not self.is_grpo_beta

    def rl_beta(self) -> float | None:
        return self.params.lam if self.is_grpo_beta else None

    def head_chunk_tokens(self) -> int:
        return self.params.chunk_tokens

    def loss(self, batch):
        return {"kl": self.params.lam * batch.kl_loss(self.params.direction, self.params.tokens)}
