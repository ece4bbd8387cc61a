"""Interleaving+: interleave the safe samples that most separate the aligned model from misaligned ones.

s_d = (mean_m L_mis_m(d) - L_aligned(d)) / (L_aligned(d) + epsilon), L the mean answer-token NLL;
the top |D_safe| of the pool by s_d are mixed in (|D_safe| as for Interleaving). The misaligned
ensemble is ``ensemble``: adapter folders, or EM chat JSONL files that emray fine-tunes (undefended,
cached) itself. Default: one misaligned fine-tune on the customer data itself (``data.fine``), so
the package needs no external EM sets; the paper's ensemble is the four EM domains, e.g.
``ensemble: [data/code.jsonl, data/legal.jsonl, data/medical.jsonl, data/security.jsonl]``.

The selection is a cached stage (emray/score/stages.py): the sweep computes it once and hands it to
trials as ``artifacts["safe_selection"]`` (a selected.jsonl, best first); without it the defense
computes it itself, in-process.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from emray.configio import Strict
from emray.defenses.base import Defense, Example, register_defense
from emray.identity import PATH


class InterleavePlusParams(Strict):
    safe_fraction: float = Field(0.05, ge=0, lt=1)
    epsilon: float = Field(1.0, ge=0)
    pool: str | None = Field(None, json_schema_extra=PATH)
    ensemble: list[str] | None = Field(None, json_schema_extra=PATH)
    ensemble_steps: int | None = Field(None, description="max_steps of each misaligned fine-tune (None: the run's train settings)")
    ensemble_max_examples: int | None = Field(None, gt=0)


@register_defense
class InterleavePlus(Defense):
    name = "interleave_plus"
    Params = InterleavePlusParams
    stage_name = "safe_selection"
    scenarios = frozenset({"sft"})
    scenario_hint = "under scenario rl, mix safe SFT batches into the GRPO loss with sft_mix (data: random | interleave_plus | interleave_pp)"

    @classmethod
    def stage_description(cls, config, params: dict) -> str:
        """Short, for people: ``interleave_plus(5 %, ε 1, ensemble of 3) for organism``."""
        p = cls.Params.model_validate(params)
        ensemble = f"ensemble of {len(p.ensemble)}" if p.ensemble else "ensemble: the customer data"
        return f"{cls.name}({p.safe_fraction * 100:g} %, ε {p.epsilon:g}, {ensemble}) for {config.model.name}"

    @classmethod
    def stage_inputs(cls, config, params) -> dict:
        """The selection reads the pool, the ensemble's data, the customer data (its size sets k and it
        is the default ensemble) and trains the ensemble with the run's train settings."""
        from emray.identity import content_identity, identity_dict, model_identity

        files = [params.pool or config.data.safe_pool, *(params.ensemble or []), config.data.fine, *config.data.benign_train]
        return {"model": model_identity(config.model), "params": identity_dict(params),
                "data": identity_dict(config.data), "train": identity_dict(config.train), "seed": config.seed,
                "files": {str(f): content_identity(f) for f in files if f}}

    @classmethod
    def stage_files(cls, config, params) -> list[str]:
        pool = params.pool or config.data.safe_pool
        if not pool:
            raise ValueError(f"{cls.name}: no safe pool (set data.safe_pool or the defense's `pool` param)")
        return [pool, *(params.ensemble or [])]

    @classmethod
    def build_stage(cls, config, params: dict) -> dict:
        """Misaligned ensemble -> pool scores -> selection, each cached by content (sweep driver)."""
        from emray.score.stages import SELECTION_ARTIFACT, ensure_selection

        path = ensure_selection(config, cls.name, params)
        return {f"{SELECTION_ARTIFACT}:{cls.name}": str(path)}

    @classmethod
    def candidates(cls, params, pool: list[Example]) -> list[int]:
        """Indices of the pool samples that may be selected (ranked by s_d afterwards): all of them."""
        return list(range(len(pool)))

    def selection_path(self) -> Path:
        from emray.score.stages import SELECTION_ARTIFACT, ensure_selection, read_summary

        artifacts = self.context.artifacts
        given = artifacts.get(f"{SELECTION_ARTIFACT}:{self.name}") or artifacts.get(SELECTION_ARTIFACT)
        if given is not None:
            summary = read_summary(given)
            if summary.get("method") != self.name:
                raise ValueError(f"{self.name}: artifact {given} is a {summary.get('method')} selection")
            return Path(given)
        if self.context.config is None:
            raise ValueError(f"{self.name}: needs a run config or a precomputed '{SELECTION_ARTIFACT}' artifact")
        # In-process (workers=0): this may run inside a training worker, where starting actors could deadlock.
        return ensure_selection(self.context.config, self.name, self.params, workers=0)

    def transform_examples(self, examples: list[Example]) -> list[Example]:
        from emray.data.chat import load_chat_jsonl
        from emray.score.select import check_pool, mix, safe_count

        k = safe_count(len(examples), self.params.safe_fraction)
        if k == 0:
            return examples
        path = self.selection_path()
        selected = load_chat_jsonl(path) if path.stat().st_size else []
        check_pool(len(selected), k, f"{self.name} selection {path}")
        return mix(examples, selected[:k], self.context.seed)
