"""``fixed``: a judge with no model, for tests and benchmarks of the serving path.

``score`` an integer: always that score. ``score`` None: a score in 0..100 that is a hash of the
prompt (different answers, different scores; the same prompt, the same score).
"""

from __future__ import annotations

import hashlib

from emray.judge_server.backends import Backend, prompt_text


class FixedBackend(Backend):
    model_name = "emray-fixed"

    def __init__(self, score: int | None = None):
        self.score = score

    def judge(self, prompt: str) -> int:
        if self.score is not None:
            return int(self.score)
        return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 101

    async def top_logprobs(self, model: str, messages: list[dict], top_k: int) -> list[tuple[str, float]]:
        return [(str(self.judge(prompt_text(messages))), 0.0)]
