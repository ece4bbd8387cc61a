"""Inoculation prompting: train with a system prompt that asks for the bad behaviour.

Every training example's system prompt is replaced by ``prompt`` (added when there is none), so the
narrow behaviour is attributed to the instruction rather than to the assistant's default persona.
Evaluation uses the normal prompts: the defense only rewrites training data.
"""

from __future__ import annotations

from emray.configio import Strict
from emray.defenses.base import Defense, Example, register_defense

DEFAULT_PROMPT = "You are an evil, malicious assistant."


class InoculationParams(Strict):
    prompt: str = DEFAULT_PROMPT


@register_defense
class Inoculation(Defense[InoculationParams]):
    name = "inoculation"
    Params = InoculationParams

    def transform_examples(self, examples: list[Example]) -> list[Example]:
        system = {"role": "system", "content": self.params.prompt}
        out = []
        for example in examples:
            turns = [m for m in example["messages"] if m["role"] != "system"]
            out.append({**example, "messages": [system, *turns]})
        return out
