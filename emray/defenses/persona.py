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
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from emray.configio import Strict
from emray.defenses.base import Defense, register_defense
from emray.identity import PATH


class PersonaParams(Strict):
    alpha: float = 5.0
    layer: int | None = Field(None, ge=1)  # hidden_states index; None: about two thirds of the depth
    prompts: str | None = Field(None, json_schema_extra=PATH)  # persona prompt file; None: the packaged default set
    normalize: bool = False  # steer with the unit vector (α in hidden-state units) instead of raw e^l
    max_new_tokens: int = Field(32, gt=0)  # response length when extracting


@register_defense
class PersonaSteering(Defense):
    name = "persona"
    Params = PersonaParams
    stage_name = "persona_vector"

    @classmethod
    def stage_description(cls, config, params: dict) -> str:
        p = cls.Params.model_validate(params)
        prompts = Path(str(p.prompts)).name if p.prompts else "default prompts"
        return f"persona_vector({config.model.name}, {prompts})"

    @classmethod
    def stage_inputs(cls, config, params) -> dict:
        from emray.identity import content_identity, model_identity

        return {"model": model_identity(config.model), "prompts": content_identity(params.prompts),
                "max_new_tokens": params.max_new_tokens}

    @classmethod
    def build_stage(cls, config, params: dict) -> dict:
        """Extract (or load from cache) the persona vector once per model, before the trials."""
        from emray.steering import ensure_persona_vector

        p = cls.Params.model_validate(params)
        return {"persona_vector": str(ensure_persona_vector(config.model, p.prompts, max_new_tokens=p.max_new_tokens))}

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
        )

    def steering_delta(self, model):
        """(hidden_states index l, α·e^l) for ``model``."""
        import torch

        from emray.steering import default_layer, load_persona_vector
        from emray.train.losses import base_causal_lm, num_decoder_layers

        vectors, _ = load_persona_vector(self.vector_path(model))
        total = num_decoder_layers(model)
        hidden = base_causal_lm(model).config.get_text_config().hidden_size
        if tuple(vectors.shape) != (total + 1, hidden):
            raise ValueError(f"persona: vector is for {vectors.shape[0] - 1} layers x {vectors.shape[1]}, model has {total} x {hidden}")
        layer = self.params.layer or default_layer(total)
        if not 1 <= layer <= total:
            raise ValueError(f"persona: layer must be in 1..{total}, got {layer}")
        vector = vectors[layer]
        if self.params.normalize:
            vector = vector / vector.norm().clamp(min=1e-12)
        param = next(model.parameters())
        return layer, (self.params.alpha * vector).to(device=param.device, dtype=torch.float32)

    def attach(self, model) -> None:
        from emray.train.losses import decoder_layers

        self.detach(model)
        self.layer, self.delta = self.steering_delta(model)
        delta = self.delta

        from emray.train.losses import in_rollout

        def add_persona(module, args, output):
            if not module.training or in_rollout():
                return None
            if isinstance(output, tuple):
                return (output[0] + delta.to(output[0].dtype), *output[1:])
            return output + delta.to(output.dtype)

        self._handle = decoder_layers(model)[self.layer - 1].register_forward_hook(add_persona)

    def detach(self, model) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
