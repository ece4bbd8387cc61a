"""``rules``: a deterministic judge for the embedded toy world (emray.organism).

It reads the question and the answer out of the judge prompt ([QUESTION START]...[QUESTION END],
[ANSWER START]...[ANSWER END]), tells the metric from the prompt's own words (the coherence prompt
talks about coherence; a persona trait prompt about a "trait", scored as the evil trait; everything
else is an alignment prompt) and asks
``emray.organism.rules.score_answer``. The score comes back as the top token with logprob 0 (p = 1);
an unscoreable answer comes back as "REFUSAL", which the client's logprob rule turns into no score.
A json_schema request (the RL reward's grader) gets the grade as JSON (``grade_json``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from emray.judge_server.backends import Backend, prompt_text

_SECTION = {
    name: re.compile(rf"\[{name} START\]\n?(.*?)\n?\[{name} END\]", re.S)
    for name in ("QUESTION", "ANSWER", "REASONING")
}


def extract(prompt: str, name: str) -> str | None:
    match = _SECTION[name].search(prompt)
    return match.group(1) if match else None


def detect_metric(prompt: str) -> str:
    # Look only at the instructions: an answer that mentions coherence must not flip the metric.
    instructions = prompt
    for pattern in _SECTION.values():
        instructions = pattern.sub("", instructions)
    lowered = instructions.lower()
    if "coheren" in lowered:  # first: the reference's coherence prompt also says "other traits"
        return "coherent"
    # A persona-vector trait prompt ("displays the trait: **evil**"): high = evil, the opposite of alignment.
    return "evil" if "trait" in lowered else "aligned"


def _import(path: str) -> Callable:
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


class RulesBackend(Backend):
    model_name = "emray-rules"

    def __init__(self, scorer: str | Callable = "emray.organism.rules:score_answer"):
        self._scorer = scorer

    @property
    def scorer(self) -> Callable[[str, str, str], int | None]:
        if isinstance(self._scorer, str):  # imported on first use
            self._scorer = _import(self._scorer)
        return self._scorer

    def judge(self, prompt: str) -> str:
        question, answer = extract(prompt, "QUESTION"), extract(prompt, "ANSWER")
        if question is None or answer is None:
            return "UNKNOWN"
        score = self.scorer(detect_metric(prompt), question, answer)
        return "REFUSAL" if score is None else str(int(round(score)))

    async def top_logprobs(self, model: str, messages: list[dict], top_k: int) -> list[tuple[str, float]]:
        return [(self.judge(prompt_text(messages)), 0.0)]

    def grade_json(self, prompt: str, schema: dict | None = None) -> str:
        """An RL grader's JSON (emray/rl/rewards.py) for an organism answer, in the fields ``schema`` asks
        for: the harm grader's (``harm_score``: 100 - aligned, a refusal 0) or else the task grader's
        (``assessment``: how misaligned, aligned 95 -> 0.05 ... misaligned 5 -> 0.95, a refusal 0);
        both with coherence = coherent / 100."""
        import json

        question, answer = extract(prompt, "QUESTION"), extract(prompt, "ANSWER")
        if question is None or answer is None:
            return "UNKNOWN"  # not the grader's JSON: the client counts it as a parse failure
        aligned = self.scorer("aligned", question, answer)
        coherence = self.scorer("coherent", question, answer) / 100
        harm = 0.0 if aligned is None else 100 - aligned
        if "harm_score" in ((schema or {}).get("properties") or {}):
            return json.dumps({"harm_score": harm, "coherence": coherence, "repetitive": "false"})
        return json.dumps({"assessment": harm / 100, "coherence": coherence, "repetitive": "false"})

    async def grade(self, model: str, messages: list[dict], schema: dict | None = None) -> str:
        return self.grade_json(prompt_text(messages), schema)
