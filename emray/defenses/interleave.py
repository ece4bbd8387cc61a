"""Interleaving: mix a random sample of benign data from a safe pool into the fine-tuning set.

``safe_fraction`` f is the share of safe samples in the mixed set: |D_safe| = round(f * |D_fine| /
(1 - f)) (see emray/score/select.py), |D_fine| the customer's narrow rows (``benign_train`` rows not
counted). D_safe is a seeded random sample of the pool (rows whose response is not labelled
unharmful dropped), shuffled in with the run seed. The pool is ``pool`` or the run's ``data.safe_pool``.
"""

from __future__ import annotations

from pydantic import Field

from emray.configio import Strict
from emray.defenses.base import Defense, Example, register_defense
from emray.hashing import DataPath


class InterleaveParams(Strict):
    safe_fraction: float = Field(0.05, gt=0, lt=1)  # 0: no safe rows, the arm is the undefended run
    pool: DataPath | None = None  # its content enters the trial key (a type: emray/hashing.py)


def resolve_pool(defense: Defense) -> str:
    config = defense.context.config
    path = defense.params.pool or (config.data.safe_pool if config is not None else None)
    if not path:
        raise ValueError(f"{defense.name}: no safe pool (set the defense's `pool` or data.safe_pool)")
    return path


@register_defense
class Interleave(Defense[InterleaveParams]):
    name = "interleave"
    Params = InterleaveParams
    scenarios = frozenset({"narrow", "benign"})
    scenario_hint = (
        "under scenario rl, mix safe SFT batches into the GRPO loss with sft_mix "
        "(data: random | interleave_plus | interleave_pp)"
    )

    def transform_examples(self, examples: list[Example]) -> list[Example]:
        from emray.data.chat import load_safe_pool
        from emray.score.select import check_pool, mix, random_indices, safe_count

        k = safe_count(len(examples), self.params.safe_fraction)
        if k == 0:
            return examples
        path = resolve_pool(self)
        pool = load_safe_pool(path)
        check_pool(len(pool), k, f"interleave ({path})")
        safe = [{"messages": pool[i]["messages"]} for i in random_indices(len(pool), k, self.context.seed)]
        return mix(examples, safe, self.context.seed)
