"""Safe data from the pool or an Interleaving+/++ selection, for the RL defenses that draw it
(``sft_mix``, ``interleaved_rl``): their shared ``safe_selection`` stage and row loading.

``data: random`` needs no stage (a seeded sample of the pool at training time); ``interleave_plus`` /
``interleave_pp`` run the interleaving defense's cached selection once, before the trials. Each user
says how its selection is sized (``_selection``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from emray.upcalls import upcall


class SafeDataSource:
    """A mixin for a Defense with ``data`` and ``pool`` params."""

    stage_name: ClassVar[str | None] = "safe_selection"
    # what the mixin reads of the Defense it is mixed into
    name: ClassVar[str]
    params: Any
    context: Any

    @classmethod
    def _selection(cls, config, params):
        """(interleaving defense name, its selection params) for ``params.data``."""
        raise NotImplementedError

    @staticmethod
    def pool_of(config, params) -> str | None:
        return params.pool or config.data.safe_pool

    @classmethod
    def random_stage_inputs(cls, config, params) -> dict:
        from emray.data.paths import content_identity

        return {"random": content_identity(cls.pool_of(config, params))}

    @classmethod
    def stage_files(cls, config, params) -> list[str]:
        pool = cls.pool_of(config, params)
        if not pool:
            raise ValueError(f"{cls.name}: no safe pool (set data.safe_pool or the defense's `pool` param)")
        return [pool]

    @classmethod
    def selection_artifact(cls, config, params) -> dict:
        """Build (or load from cache) the selection; the artifact the trials read it from."""
        from emray.defenses.base import SELECTION_ARTIFACT

        ensure_selection = upcall("ensure_selection")  # the stage is above the defenses (emray/upcalls.py)

        name, sel = cls._selection(config, params)
        return {f"{SELECTION_ARTIFACT}:{name}": str(ensure_selection(config, name, sel))}

    def random_rows(self, k: int) -> list[dict]:
        """k pool rows drawn with the run seed."""
        from emray.data.chat import load_safe_pool
        from emray.score.select import check_pool, random_indices

        source = self.pool_of(self.context.config, self.params)
        pool = load_safe_pool(source)
        check_pool(len(pool), k, f"{self.name} ({source})")
        return [pool[i] for i in random_indices(len(pool), k, self.context.seed)]

    def selection_rows(self, k: int) -> list[dict]:
        """The selection's first k rows (best first), from the stage's artifact or built here."""
        from emray.data.chat import load_chat_jsonl
        from emray.defenses.base import SELECTION_ARTIFACT
        from emray.score.select import check_pool

        ensure_selection = upcall("ensure_selection")  # the stage is above the defenses (emray/upcalls.py)

        config = self.context.config
        name, sel = self._selection(config, self.params)
        path = self.context.artifacts.get(f"{SELECTION_ARTIFACT}:{name}") or ensure_selection(
            config, name, sel, workers=0
        )
        selected = load_chat_jsonl(path)
        check_pool(len(selected), k, f"{self.name} {name} selection {path}")
        return selected[:k]
