"""Judge backends: what answers a judge prompt with next-token top logprobs. One backend a file.

A backend is an object with ``model_name`` and ``async top_logprobs(model, messages, top_k)`` returning
``[(token, logprob), ...]`` best first; raising ``Fault`` makes the server answer with an HTTP error
(or a malformed body) instead: that is how ``flaky`` injects failures.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# name -> "module:factory"; imported on use so that e.g. the rules backend never imports torch.
_REGISTRY: dict[str, str | Callable[..., Any]] = {
    "rules": "emray.judge_server.backends.rules:RulesBackend",
    "hf": "emray.judge_server.backends.hf:HFBackend",
    "flaky": "emray.judge_server.backends.flaky:FlakyBackend",
    "fixed": "emray.judge_server.backends.fixed:FixedBackend",
}


class Fault(Exception):
    """An injected server-side failure: HTTP ``status`` after ``delay_s``, with ``body`` if given."""

    def __init__(self, status: int, body: bytes | None = None, delay_s: float = 0.0, kind: str | None = None):
        super().__init__(f"injected {kind or status}")
        self.status, self.body, self.delay_s, self.kind = status, body, delay_s, kind or str(status)


class Backend:
    model_name = "emray-judge"

    async def top_logprobs(self, model: str, messages: list[dict], top_k: int) -> list[tuple[str, float]]:
        raise NotImplementedError

    async def grade(self, model: str, messages: list[dict], schema: dict | None = None) -> str:
        """The reply text to a structured-output (json_schema) request whose JSON schema is ``schema``;
        backends without one say so."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def register_backend(name: str, factory: str | Callable[..., Any]) -> None:
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(name: str, **options: Any) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"unknown judge backend {name!r} (known: {', '.join(backend_names())})")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    try:
        return factory(**options)
    except TypeError as err:
        raise ValueError(f"judge backend {name!r}: bad options {sorted(options)}: {err}") from None


def prompt_text(messages: list[dict]) -> str:
    """The judge prompt: the user turns' text (the EM judge sends one user message)."""
    return "\n".join(m.get("content") or "" for m in messages if m.get("role") == "user")
