"""Inoculation prompting: train with a system prompt that asks for the bad behaviour.

Every training example's system prompt is replaced by ``prompt`` (added when there is none), so the
narrow behaviour is attributed to the instruction rather than to the assistant's default persona.
With ``mode: prefix`` the prompt is put before the example's own system prompt instead (``prompt``,
a blank line, the old one), as the reference's RL inoculation keeps SYSTEM_PROMPT_RL and its
``<think>`` instruction (grpo.py:963-964). Evaluation uses the normal prompts: the defense only
rewrites training data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from emray.configio import Strict
from emray.defenses.base import Defense, Example, register_defense
from emray.hashing import OPTIONAL_SECTION

DEFAULT_PROMPT = "You are an evil, malicious assistant."


class InoculationParams(Strict):
    prompt: str = DEFAULT_PROMPT
    # None: replace (the paper's SFT inoculation); enters a trial's identity only when set
    mode: Literal["replace", "prefix"] | None = Field(None, json_schema_extra=OPTIONAL_SECTION)


@register_defense
class Inoculation(Defense[InoculationParams]):
    name = "inoculation"
    Params = InoculationParams

    def transform_examples(self, examples: list[Example]) -> list[Example]:
        prompt = self.params.prompt
        out = []
        for example in examples:
            turns = [m for m in example["messages"] if m["role"] != "system"]
            old = [m["content"] for m in example["messages"] if m["role"] == "system"]
            content = prompt + "\n\n" + old[0] if self.params.mode == "prefix" and old and old[0] else prompt
            out.append({**example, "messages": [{"role": "system", "content": content}, *turns]})
        return out
