"""Interleaving+: interleave safe samples that most separate the aligned model from misaligned ones.

s_d = (mean_m L_mis_m(d) - L_aligned(d)) / (L_aligned(d) + epsilon), L the mean answer-token NLL.
|D_safe| (as for Interleaving, from the narrow data's size) samples are drawn at random with the
run's seed from the top ``quantile`` of the pool by s_d, as the reference does (top 5000 of 100k
rows, shuffled, the first k interleaved); ``quantile: null`` takes the strict top |D_safe|.

The misaligned ensemble is ``ensemble``: adapter folders, or EM chat JSONL files that emray
fine-tunes (undefended, cached) itself. Default: the EM domains other than the customer's, as the
reference's ``--held_out_adapter`` holds the defended domain out: for ``data.fine`` =
``<dir>/code.jsonl`` it is ``<dir>/{medical,legal,security}.jsonl`` (emray/stages/ensemble.py
``default_ensemble``); customer data not named after an EM domain needs ``ensemble:`` listed (an
error at --dry-run says so). The ensemble is trained with ``ensemble_seed`` (default 0), so every
run seed shares it, as the reference trains each adapter once.

The selection is a cached stage (emray/stages/selection.py): the sweep computes it once and hands it to
trials as ``artifacts["safe_selection"]`` (a selected.jsonl); without it the defense computes it
itself, in-process.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from emray.configio import Strict
from emray.data.em_domains import ensemble_entries
from emray.defenses.base import Defense, Example, register_defense
from emray.hashing import DataPath
from emray.upcalls import upcall


class InterleavePlusParams(Strict):
    safe_fraction: float = Field(0.05, gt=0, lt=1)  # 0: no safe rows, the arm is the undefended run
    epsilon: float = Field(1.0, ge=0)
    pool: DataPath | None = None
    ensemble: list[DataPath] | None = Field(None, description="None: the EM domains other than data.fine's")
    ensemble_steps: int | None = Field(
        None, gt=0, description="max_steps of each misaligned fine-tune (None: the run's train settings)"
    )
    ensemble_max_examples: int | None = Field(None, gt=0)
    ensemble_seed: int | None = Field(0, description="training seed of the ensemble (None: the run's seed)")
    quantile: float | None = Field(
        0.05, gt=0, le=1, description="draw from this top share of the pool; None: strict top-k"
    )


@register_defense
class InterleavePlus(Defense[InterleavePlusParams]):
    name = "interleave_plus"
    Params = InterleavePlusParams
    stage_name = "safe_selection"
    scenarios = frozenset({"narrow", "benign"})
    scenario_hint = "under scenario rl, mix safe SFT batches into the GRPO loss with sft_mix (data: random | interleave_plus | interleave_pp)"

    @classmethod
    def stage_description(cls, config, params: InterleavePlusParams) -> str:
        """Short, for people: ``interleave_plus(5 %, ε 1, top 5 %, ensemble: medical, legal, security) for organism``."""
        p = params
        try:
            names = [str(e).rstrip("/").rpartition("/")[2].partition(".")[0] for e in ensemble_entries(config, p)]
            ensemble = f"ensemble: {', '.join(names)}"
        except ValueError:
            ensemble = "ensemble: unknown (set `ensemble:`)"
        draw = "strict top-k" if p.quantile is None else f"draw from top {p.quantile * 100:g} %"
        return f"{cls.name}({p.safe_fraction * 100:g} %, ε {p.epsilon:g}, {draw}, {ensemble}) for {config.model.name}"

    @classmethod
    def stage_inputs(cls, config, params: InterleavePlusParams) -> dict:
        """The selection reads the pool, the ensemble's data, the customer data (its size sets k) and the
        benign tasks (a larger benign set needs a larger k), trains the ensemble with the run's train
        settings, and draws with the run's seed."""
        from emray.data.paths import content_identity
        from emray.hashing import identity_dict
        from emray.models import model_identity

        benign = config.benign.train if config.benign else []
        files = [params.pool or config.data.safe_pool, *ensemble_entries(config, params), config.data.fine, *benign]
        return {
            "model": model_identity(config.model),
            "params": identity_dict(params),
            "data": identity_dict(config.data),
            "train": identity_dict(config.train),
            "seed": config.seed,
            "benign": identity_dict(config.benign) if config.benign else None,
            "files": {str(f): content_identity(f) for f in files if f},
        }

    @classmethod
    def stage_files(cls, config, params: InterleavePlusParams) -> list[str]:
        pool = params.pool or config.data.safe_pool
        if not pool:
            raise ValueError(f"{cls.name}: no safe pool (set data.safe_pool or the defense's `pool` param)")
        return [pool, *ensemble_entries(config, params)]

    @classmethod
    def build_stage(cls, config, params: InterleavePlusParams) -> dict:
        """Misaligned ensemble -> pool scores -> selection, each cached by content (sweep driver)."""
        from emray.defenses.base import SELECTION_ARTIFACT

        ensure_selection = upcall("ensure_selection")  # the stage is above the defenses (emray/upcalls.py)

        path = ensure_selection(config, cls.name, params)
        return {f"{SELECTION_ARTIFACT}:{cls.name}": str(path)}

    def selection_path(self) -> Path:
        from emray.defenses.base import SELECTION_ARTIFACT
        from emray.score.select import read_summary

        ensure_selection = upcall("ensure_selection")  # the stage is above the defenses (emray/upcalls.py)

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
