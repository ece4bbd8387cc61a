"""Interleaving++: Interleaving+ without refusals.

Pool samples whose answer has a refusal keyword among its first ``refusal_first_words`` words
(case- and punctuation-insensitive; default sorry / apologize / cannot / can't / unable) are dropped
before ranking by s_d: a loss-gap ranking otherwise favours refusals, and training on them teaches
over-refusal rather than alignment.
"""

from __future__ import annotations

from pydantic import Field

from emray.defenses.base import register_defense
from emray.defenses.interleave_plus import InterleavePlus, InterleavePlusParams
from emray.score.select import DEFAULT_REFUSAL_KEYWORDS


class InterleavePPParams(InterleavePlusParams):
    refusal_keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSAL_KEYWORDS))
    refusal_first_words: int = Field(10, gt=0)


@register_defense
class InterleavePP(InterleavePlus):
    name = "interleave_pp"
    Params = InterleavePPParams

    @classmethod
    def candidates(cls, params, pool) -> list[int]:
        """Interleaving+'s candidates without the refusals."""
        from emray.data.chat import final_answer
        from emray.score.select import is_refusal

        return [
            i
            for i in super().candidates(params, pool)
            if not is_refusal(final_answer(pool[i]), params.refusal_keywords, params.refusal_first_words)
        ]
