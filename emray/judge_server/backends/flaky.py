"""``flaky``: wraps another backend, adds latency and fails a share of calls on purpose.

Failure kinds, drawn uniformly among ``kinds``: "429" (rate limited, with Retry-After: 0), "500",
"timeout" (holds the call ``timeout_delay_s`` then answers 504; a client with a shorter timeout sees a
timeout) and "malformed" (HTTP 200 whose body is not a completion: truncated JSON, or JSON without
logprobs). Seeded, so a run's faults reproduce for the same order of calls.

``outage_file``: while that file exists every call fails with 500 (a judge outage that a test can
start and end from outside the server process).
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from emray.judge_server.backends import Backend, Fault, create_backend

KINDS = ("429", "500", "timeout", "malformed")
_MALFORMED = (
    b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess',
    b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": []}',
)


class FlakyBackend(Backend):
    def __init__(
        self,
        inner: str | Backend = "fixed",
        failure_rate: float = 0.3,
        latency_s: float = 0.0,
        timeout_delay_s: float = 2.0,
        kinds: list[str] | tuple[str, ...] = KINDS,
        seed: int = 0,
        outage_file: str | None = None,
        **inner_options: Any,
    ):
        if not 0 <= failure_rate <= 1:
            raise ValueError(f"failure_rate must be in [0, 1], got {failure_rate}")
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown failure kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
        self.inner = create_backend(inner, **inner_options) if isinstance(inner, str) else inner
        self.model_name = self.inner.model_name
        self.failure_rate, self.latency_s, self.timeout_delay_s = failure_rate, latency_s, timeout_delay_s
        self.kinds = tuple(kinds)
        self.rng = random.Random(seed)
        self.outage_file = outage_file

    def _fault(self) -> Fault | None:
        if self.outage_file and os.path.exists(self.outage_file):
            return Fault(500, kind="500")
        if self.rng.random() >= self.failure_rate:
            return None
        kind = self.rng.choice(self.kinds)
        if kind == "timeout":
            return Fault(504, delay_s=self.timeout_delay_s, kind="timeout")
        if kind == "malformed":
            return Fault(200, body=self.rng.choice(_MALFORMED), kind="malformed")
        return Fault(int(kind), kind=kind)

    async def top_logprobs(self, model: str, messages: list[dict], top_k: int) -> list[tuple[str, float]]:
        fault = self._fault()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault is not None:
            raise fault
        return await self.inner.top_logprobs(model, messages, top_k)

    def close(self) -> None:
        self.inner.close()
