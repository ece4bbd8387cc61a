"""Persona-vector steering during training (preventative steering).

While training, a forward hook adds α·e^l to the output of decoder block l−1 (= ``hidden_states[l]``)
at every position, where e^l is the "evil" persona vector (emray/steering/persona_vector.py). The
optimiser then has no need to move the weights toward the persona to fit the data, so less of it is
learned. ``attach`` registers the hook and ``detach`` removes it: evaluation, generation and the
saved adapter never see it, and it skips modules in eval mode.

Combined with a regulariser (KL, LDIFS), the reference forward is steered too: the reference is
"the model being trained, adapter disabled", training-time interventions included. Then at step 0
(adapter B = 0) KL and LDIFS are exactly 0, and the regulariser penalises only what the adapter
learns; an unsteered reference would instead make the regulariser pull the adapter to undo the
steering from the first step, so the two defenses would cancel (tests/test_defense_persona.py pins
this).

Under ``scenario: rl`` the hook acts on GRPO's loss forward passes and not on the rollouts (TRL's
generation and scoring run inside ``rollout_pass``): what the reference's hook did in effect, since
its rollouts ran in vLLM, where HF hooks never fire.

The vector comes from ``context.artifacts["persona_vector"]`` (the sweep's cached stage) when set,
else from ``ensure_persona_vector`` (cached; extracted on the model being trained, adapter disabled).
``extraction: greedy`` (default) extracts from greedy answers without a judge; ``extraction:
reference`` as the reference code does: sampled answers kept only when the judge scores the trait
>= 50 (positive side; < 50 on the negative side) and coherence >= 50 on both (docs/defenses.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from emray.configio import Strict
from emray.defenses.base import Defense, register_defense
from emray.hashing import NOT_IDENTITY, OPTIONAL_SECTION, DataPath


class PersonaParams(Strict):
    alpha: float = 5.0
    layer: int | None = Field(None, ge=1)  # hidden_states index; None: about two thirds of the depth
    prompts: DataPath | None = None  # persona prompt file; None: the packaged default set
    normalize: bool = False  # steer with the unit vector (α in hidden-state units) instead of raw e^l
    max_new_tokens: int = Field(32, gt=0)  # response length when extracting (the reference samples up to 1000)
    # greedy: one greedy answer per (pair, question), no judge. reference: the reference code's sampled,
    # judge-filtered answers (emray/steering/persona_judge.py); the settings below apply to it only.
    extraction: Literal["greedy", "reference"] = "greedy"
    samples_per_question: int = Field(10, gt=0)  # per (pair, question) and side; the reference's n_per_question
    trait_threshold: float = Field(50.0, ge=0, le=100)  # keep pos trait >= t and neg trait < 100 - t
    coherence_threshold: float = Field(50.0, ge=0, le=100)  # keep coherence >= c on both sides
    trait_prompt: DataPath | None = None  # trait judge prompt file; None: the evil prompt
    judge_model: str | None = None  # None: eval.judge.model, else the reference's gpt-4.1-mini
    min_kept: int = Field(10, gt=0, json_schema_extra=NOT_IDENTITY)  # fewer kept pairs: an error, not a vector
    extraction_seed: int = 0  # sampling seed of the reference extraction
    # Where the hook adds α·e^l. None (= all): every position of every training forward. completion
    # (scenario rl only): in GRPO's loss forward, only at positions whose next token is a completion token
    # (the reference's `mode: decode_only`). Enters trial keys only when set, so "all" keys stay the old ones.
    positions: Literal["completion"] | None = Field(None, json_schema_extra=OPTIONAL_SECTION)

    @field_validator("positions", mode="before")
    @classmethod
    def _all_is_default(cls, value):
        return None if value == "all" else value


def judge_filter(config, params: PersonaParams):
    """The reference extraction's ``JudgeFilter`` for ``params`` (None for greedy)."""
    if params.extraction != "reference":
        return None
    from emray.steering.persona_judge import (
        REFERENCE_JUDGE_MODEL,
        JudgeFilter,
        load_trait_prompt,
    )

    judge = config.eval.judge
    return JudgeFilter(
        judge=judge,
        judge_model=params.judge_model or judge.model or REFERENCE_JUDGE_MODEL,
        trait_prompt=load_trait_prompt(params.trait_prompt),
        samples_per_question=params.samples_per_question,
        trait_threshold=params.trait_threshold,
        coherence_threshold=params.coherence_threshold,
        min_kept=params.min_kept,
        seed=params.extraction_seed,
    )


@register_defense
class PersonaSteering(Defense[PersonaParams]):
    name = "persona"
    Params = PersonaParams
    stage_name = "persona_vector"

    @classmethod
    def check_scenario(cls, config, params: PersonaParams, where: str) -> None:
        super().check_scenario(config, params, where)
        if params.positions != "completion":
            return
        if config.scenario != "rl":
            raise ValueError(
                f"{where}: positions: completion steers where the next token is a GRPO completion token: "
                f"it needs scenario rl (under scenario {config.scenario} persona steers every position)"
            )
        from emray.defenses import DefenseContext, get_defense_class

        context = DefenseContext(config=config)  # kl as GRPO's beta adds no loss forward; kl to the warm start does
        extra = [
            s.name
            for s in config.defenses
            if s.name not in (cls.name, "none") and get_defense_class(s.name)(s.params, context).has_loss_term()
        ]
        if extra:
            raise ValueError(
                f"{where}: positions: completion steers only GRPO's own loss forward (as the reference's "
                f"decode_only, which allowed no other loss term); it cannot be combined with "
                f"{', '.join(extra)}, whose loss forwards have other positions"
            )

    @classmethod
    def stage_description(cls, config, params: PersonaParams) -> str:
        p = params
        prompts = Path(str(p.prompts)).name if p.prompts else "default prompts"
        how = f", judged {p.samples_per_question}/question" if p.extraction == "reference" else ""
        return f"persona_vector({config.model.name}, {prompts}{how})"

    @classmethod
    def stage_inputs(cls, config, params: PersonaParams) -> dict:
        from emray.data.paths import content_identity
        from emray.hashing import identity_dict
        from emray.models import model_identity

        inputs = {
            "model": model_identity(config.model),
            "prompts": content_identity(params.prompts),
            "max_new_tokens": params.max_new_tokens,
        }
        if params.extraction == "reference":  # greedy keeps its old inputs: its cached vectors stay valid
            inputs.update(
                extraction="reference",
                samples_per_question=params.samples_per_question,
                trait_threshold=params.trait_threshold,
                coherence_threshold=params.coherence_threshold,
                trait_prompt=content_identity(params.trait_prompt),
                judge_model=params.judge_model,
                judge=identity_dict(config.eval.judge),
                seed=params.extraction_seed,
            )
        return inputs

    @classmethod
    def build_stage(cls, config, params: PersonaParams) -> dict:
        """Extract (or load from cache) the persona vector once per model, before the trials."""
        from emray.steering import ensure_persona_vector

        p = params
        path = ensure_persona_vector(
            config.model, p.prompts, max_new_tokens=p.max_new_tokens, judge_filter=judge_filter(config, p)
        )
        return {"persona_vector": str(path)}

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self._handle = None
        self.delta = None
        self.layer = None

    def vector_path(self, model=None):
        path = self.context.artifacts.get("persona_vector")
        if path:
            return path
        from emray.steering import ensure_persona_vector

        if self.context.config is None:
            raise ValueError("persona: no persona_vector artifact and no run config to extract one from")
        return ensure_persona_vector(
            self.context.config.model,
            self.params.prompts,
            max_new_tokens=self.params.max_new_tokens,
            model=model,
            tokenizer=self.context.tokenizer,
            judge_filter=judge_filter(self.context.config, self.params),
        )

    def steering_delta(self, model):
        """(hidden_states index l, α·e^l) for ``model``."""
        import torch

        from emray.defenses.losses import base_causal_lm, num_decoder_layers
        from emray.steering import default_layer, load_persona_vector

        vectors, _ = load_persona_vector(self.vector_path(model))
        total = num_decoder_layers(model)
        hidden = base_causal_lm(model).config.get_text_config().hidden_size
        if tuple(vectors.shape) != (total + 1, hidden):
            raise ValueError(
                f"persona: vector is for {vectors.shape[0] - 1} layers x {vectors.shape[1]}, model has {total} x {hidden}"
            )
        layer = self.params.layer or default_layer(total)
        if not 1 <= layer <= total:
            raise ValueError(f"persona: layer must be in 1..{total}, got {layer}")
        vector = vectors[layer]
        if self.params.normalize:
            vector = vector / vector.norm().clamp(min=1e-12)
        param = next(model.parameters())
        return layer, (self.params.alpha * vector).to(device=param.device, dtype=torch.float32)

    def attach(self, model) -> None:
        from emray.defenses.losses import decoder_layers

        self.detach(model)
        self.layer, self.delta = self.steering_delta(model)
        delta = self.delta

        from emray.defenses.losses import in_rollout

        completion_only = self.params.positions == "completion"

        def add_persona(module, args, output):
            if not module.training or in_rollout():
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            add = delta.to(hidden.dtype)
            if completion_only:
                add = completion_positions(hidden) * add
            steered = hidden + add
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        self._handle = decoder_layers(model)[self.layer - 1].register_forward_hook(add_persona)

    def detach(self, model) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def completion_positions(hidden):
    """[B, T, 1] 0/1 of the current GRPO loss forward's completion-predicting positions (emray/train/grpo.py
    sets them); an error, never a silent no-op, when they are missing or do not match the forward."""
    from emray.defenses.losses import steered_positions

    mask = steered_positions()
    if mask is None:
        raise RuntimeError(
            "persona positions: completion: a training forward with no steered positions; only "
            "GRPO's loss forward (DefendedGRPOTrainer.compute_loss, scenario rl) sets them"
        )
    if tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise RuntimeError(
            f"persona positions: completion: the recorded positions are {tuple(mask.shape)} but the "
            f"forward's hidden states are {tuple(hidden.shape[:2])} (batch x tokens): a chunked or "
            "truncated forward (TRL logits_to_keep / batch chunks) would be steered at the wrong places"
        )
    return mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
