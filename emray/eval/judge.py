"""Async judge client for any OpenAI-compatible endpoint.

One judgment = one chat completion of a judge prompt, answered with one token whose top-20 logprobs
give the score (emray.eval.aggregate). The client adds what a long sweep needs on top of
``openai.AsyncOpenAI``: bounded concurrency, a client-side rate limit (requests and tokens per minute,
token buckets), retries with exponential backoff and jitter on 429 / 5xx / timeouts / malformed
bodies (the openai client's own retries are off so ours are the ones counted), a persistent cache
(a re-run costs no call) and counts of calls, hits, retries, tokens and estimated cost.

``base_url: local`` starts ``emray judge-server`` in this process for the client's lifetime.
The API key is read from the environment when the client is built and never logged or stored
(``$EMRAY_JUDGE_TOKEN``: an emray judge-server's bearer token, sent as the key).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from emray.config.eval import JudgeConfig
from emray.eval.aggregate import MIN_NUMERIC_MASS, score_from_logprobs
from emray.eval.judge_cache import JudgeCache, judge_cache_key

log = logging.getLogger(__name__)

DEFAULT_JUDGE_MODEL = "gpt-4o-mini-2024-07-18"
# The seed paper's request: one token, its top-20 logprobs, deterministic.
JUDGE_PARAMS: dict[str, Any] = {"max_tokens": 1, "logprobs": True, "top_logprobs": 20, "temperature": 0, "seed": 0}
# USD per 1M (input, output) tokens; the longest matching prefix wins.
PRICES = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "0.0.0.0")


class JudgeError(RuntimeError):
    """Judgments that could not be obtained (after retries, or a non-retryable error)."""


class MalformedResponse(ValueError):
    """A 200 response without usable top logprobs."""


@dataclass(frozen=True)
class JudgeRequest:
    prompt: str
    model: str = DEFAULT_JUDGE_MODEL


@dataclass
class JudgeResult:
    score: float | None
    top_logprobs: list[tuple[str, float]]
    cached: bool = False
    failed: bool = False  # the judge gave up on it (only returned under ``max_failure_rate``)
    # What this judgment's own call cost (0 for a cache hit): a trial's judging cost, emray/eval/cost.py
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


def check_failure_rate(
    failed: int, total: int, max_failure_rate: float, first_error: BaseException | None = None
) -> None:
    """Raise JudgeError when more than ``max_failure_rate`` of ``total`` judgments failed."""
    if failed and failed > max_failure_rate * total:
        raise JudgeError(
            f"{failed} of {total} judgments failed ({failed / total:.0%} > max_failure_rate {max_failure_rate:.0%}); "
            f"the {total - failed} finished ones are cached, so a re-run asks only for the rest. First error: {first_error}"
        )


@dataclass
class JudgeStats:
    requests: int = 0  # judgments asked for (after de-duplication)
    cache_hits: int = 0
    calls: int = 0  # HTTP attempts, retries included
    retries: int = 0
    failures: int = 0  # judgments given up on
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # retried errors by kind

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, other: JudgeStats | dict) -> None:
        other = other if isinstance(other, dict) else other.as_dict()
        for key, value in other.items():
            if key == "errors":
                for kind, n in value.items():
                    self.errors[kind] = self.errors.get(kind, 0) + n
            else:
                setattr(self, key, getattr(self, key) + value)


def judgment_usage(results: Iterable[JudgeResult]) -> dict[str, Any]:
    """What a batch of judgments cost by itself (a shared pool's stats cover the whole sweep): its calls
    (judgments not from the cache), tokens and dollars. Identical requests share one result, counted once."""
    unique = list({id(r): r for r in results}.values())
    fresh = [r for r in unique if not r.cached and not r.failed]
    return {
        "calls": len(fresh),
        "cache_hits": sum(r.cached for r in unique),
        "prompt_tokens": sum(r.prompt_tokens for r in fresh),
        "completion_tokens": sum(r.completion_tokens for r in fresh),
        "cost_usd": sum(r.cost_usd for r in fresh),
    }


def price_for(model: str, cfg: JudgeConfig, local: bool) -> tuple[float, float]:
    if cfg.price_input_per_1m is not None or cfg.price_output_per_1m is not None:
        return cfg.price_input_per_1m or 0.0, cfg.price_output_per_1m or 0.0
    if local:
        return 0.0, 0.0
    matches = [p for p in PRICES if model.startswith(p)]
    return PRICES[max(matches, key=len)] if matches else (0.0, 0.0)


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 8  # ~4 characters a token, plus the chat wrapper


class TokenBucket:
    """``rate_per_minute`` units a minute, bursts of up to one second's worth (at least ``min_burst``)."""

    def __init__(self, rate_per_minute: float, min_burst: float = 1.0):
        self.rate = rate_per_minute / 60.0
        self.capacity = max(self.rate, min_burst)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:  # FIFO: a big request is not starved by small ones
            amount_needed = min(amount, self.capacity)  # a request larger than a burst still goes through
            while True:
                self._refill()
                if self.level >= amount_needed:
                    self.level -= amount
                    return
                await asyncio.sleep((amount_needed - self.level) / self.rate)

    def adjust(self, delta: float) -> None:
        """Charge (delta > 0) or refund what an estimate got wrong."""
        self.level = min(self.capacity, self.level - delta)


class _Session:
    """What belongs to one event loop: the HTTP client, the semaphore and the buckets."""

    def __init__(self, cfg: JudgeConfig, base_url: str, api_key: str):
        import openai

        self.loop = asyncio.get_running_loop()
        http_client = None
        if cfg.http == "aiohttp":  # measured ~2x the judgments/s of the default httpx pool at concurrency 64
            try:
                http_client = openai.DefaultAioHttpClient(timeout=cfg.timeout_s)
            except (ImportError, RuntimeError) as err:  # aiohttp missing: the default transport still works
                log.warning("judge: aiohttp transport unavailable (%s); using httpx", err)
        self.client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=cfg.timeout_s, http_client=http_client
        )
        self.semaphore = asyncio.Semaphore(cfg.concurrency)
        self.requests = TokenBucket(cfg.requests_per_minute) if cfg.requests_per_minute else None
        self.tokens = TokenBucket(cfg.tokens_per_minute) if cfg.tokens_per_minute else None


def _is_local(url: str) -> bool:
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    return host in {h.strip("[]") for h in LOCAL_HOSTS}


def _parse_top_logprobs(body: Any) -> tuple[list[tuple[str, float]], dict]:
    """(top logprobs, usage) from a chat completion body (the JSON, as a dict)."""
    try:
        top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        pairs = [(str(t["token"]), float(t["logprob"])) for t in top]
    except (AttributeError, IndexError, TypeError, KeyError, ValueError) as err:
        raise MalformedResponse(f"no top logprobs in the response ({type(err).__name__})") from None
    if not pairs:
        raise MalformedResponse("empty top logprobs in the response")
    usage = body.get("usage") or {}
    return pairs, usage if isinstance(usage, dict) else {}


class JudgeClient:
    """Judges prompts against ``cfg.base_url``; ``judge_many`` (sync) or ``ajudge_many`` (async).

    Picklable (Ray ships it to actors): the HTTP session, the cache connection and a local server
    are rebuilt in the receiving process.
    """

    def __init__(self, cfg: JudgeConfig, base_url: str | None = None, cache: JudgeCache | bool | None = None):
        self.cfg = cfg
        self._base_url_override = base_url
        self._cache_arg = cache
        self._setup()

    def _setup(self) -> None:
        cfg, cache = self.cfg, self._cache_arg
        if cache is None or cache is True:
            cache = JudgeCache(cfg.cache_path) if cfg.cache else None
        # not ``cache or None``: an empty cache has len 0 and is falsy
        self.cache: JudgeCache | None = None if cache is False else cache
        self.stats = JudgeStats()
        self._server: Any = None  # the local judge server, started on first use
        self._session: _Session | None = None
        self.base_url = self._base_url_override or cfg.base_url
        if cfg.base_url == "local":
            # The port changes every run (also when a sweep starts the server and passes its URL as
            # ``base_url``), so the cache identity names the backend instead of the URL.
            self.identity = f"local:{cfg.backend}:{sorted(cfg.backend_options.items())}"
        else:
            self.identity = self.base_url
        self.local = self.base_url == "local" or _is_local(self.base_url)
        from emray.judge_server.server import TOKEN_ENV

        # An emray judge-server's bearer token ($EMRAY_JUDGE_TOKEN) comes first for a judge on this machine
        # (never send an OpenAI key there); the named API key comes first for any other endpoint.
        key, token = os.environ.get(cfg.api_key_env), os.environ.get(TOKEN_ENV)
        key = (token or key) if self.local else (key or token)
        if not key:
            if not self.local:
                raise JudgeError(
                    f"judge at {self.base_url}: set the API key in the environment variable {cfg.api_key_env} "
                    f"(for an emray judge-server: its token in {TOKEN_ENV})"
                )
            key = "local-no-key"
        self._api_key = key

    def __getstate__(self) -> dict:
        cache = self._cache_arg if isinstance(self._cache_arg, (bool, type(None))) else self.cache
        return {"cfg": self.cfg, "base_url": self._base_url_override, "cache": cache}

    def __setstate__(self, state: dict) -> None:
        self.cfg, self._base_url_override, self._cache_arg = state["cfg"], state["base_url"], state["cache"]
        self._setup()

    def __repr__(self) -> str:  # no key here
        return f"JudgeClient(base_url={self.base_url!r}, concurrency={self.cfg.concurrency})"

    # -- lifecycle ---------------------------------------------------------------------------
    def _url(self) -> str:
        if self.base_url != "local":
            return self.base_url
        if self._server is None:
            from emray.judge_server.server import start_judge_server

            self._server = start_judge_server(self.cfg.backend, self.cfg.backend_options)
        return self._server.url

    def _session_here(self) -> _Session:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.loop is not loop:
            self._session = _Session(self.cfg, self._url(), self._api_key)
        return self._session

    async def aclose_session(self) -> None:
        if self._session is not None:
            await self._session.client.close()
            self._session = None

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- judging -----------------------------------------------------------------------------
    def _messages(self, prompt: str) -> list[dict]:
        return [{"role": "user", "content": prompt}]

    def key_for(self, request: JudgeRequest) -> str:
        model = self.cfg.model or request.model
        return judge_cache_key(self.identity, model, self._messages(request.prompt), JUDGE_PARAMS)

    async def _post(self, session: _Session, model: str, prompt: str, params: dict) -> tuple[dict, int]:
        """One chat completion within the session's rate limits: (the response body, its token estimate)."""
        estimate = estimate_tokens(prompt) + params["max_tokens"]
        if session.requests:
            await session.requests.acquire(1)
        if session.tokens:
            await session.tokens.acquire(estimate)
        async with session.semaphore:
            self.stats.calls += 1
            # client.post with cast_to=object, not chat.completions.create: the same HTTP request and
            # error handling, without the typed transform of the params and the model construction of
            # the response, which took ~2/3 of the client's CPU per call (measured at concurrency 64).
            body = await session.client.post(
                "/chat/completions",
                cast_to=object,
                body={"model": model, "messages": self._messages(prompt), **params},
            )
        return body, estimate  # type: ignore[return-value]  # cast_to=object: the raw JSON dict

    @staticmethod
    def _settle_tokens(session: _Session, usage: dict, estimate: int) -> None:
        """Correct the token limiter by what the response says it used."""
        if session.tokens and usage.get("total_tokens"):
            session.tokens.adjust(usage["total_tokens"] - estimate)

    async def _call(self, session: _Session, model: str, prompt: str) -> tuple[list[tuple[str, float]], dict]:
        body, estimate = await self._post(session, model, prompt, JUDGE_PARAMS)
        top, usage = _parse_top_logprobs(body)
        self._settle_tokens(session, usage, estimate)
        return top, usage

    def _retry_kind(self, err: BaseException) -> str | None:
        """Why ``err`` is worth a retry, or None when it is not."""
        import json

        import openai

        if isinstance(err, openai.APITimeoutError):
            return "timeout"
        if isinstance(err, openai.APIConnectionError):
            return "connection"
        if isinstance(err, openai.APIStatusError):
            code = err.status_code
            if getattr(err, "code", None) == "insufficient_quota":  # a 429 that waiting does not fix
                return None
            if code == 429 or code >= 500 or code in (408, 409):
                return str(code)
            return None
        if isinstance(err, (MalformedResponse, json.JSONDecodeError, openai.APIResponseValidationError)):
            return "malformed"
        return None

    def _backoff(self, attempt: int, err: BaseException) -> float:
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt)
        delay = delay / 2 + random.uniform(0, delay / 2)  # "equal jitter": spread retries, keep a floor
        response = getattr(err, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            if retry_after is not None:
                delay = max(delay, min(float(retry_after), self.cfg.backoff_max_s))
        except ValueError:
            pass
        return delay

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    async def _retrying(self, call):
        """``await call()`` with our retries (backoff, jitter, Retry-After); JudgeError when it gives up."""
        attempt = 0
        while True:
            try:
                return await call()
            except Exception as err:  # noqa: BLE001 - classified below
                kind = self._retry_kind(err)
                if kind is None or attempt >= self.cfg.max_retries:
                    self.stats.failures += 1
                    why = "not retryable" if kind is None else f"gave up after {attempt} retries"
                    raise JudgeError(self._scrub(f"{why}: {type(err).__name__}: {err}")) from None
                self.stats.retries += 1
                self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
                await asyncio.sleep(self._backoff(attempt, err))
                attempt += 1

    def _count_usage(self, model: str, usage: dict) -> tuple[int, int, float]:
        """Add a response's usage to the stats: (prompt tokens, completion tokens, USD)."""
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        price_in, price_out = price_for(model, self.cfg, self.local)
        cost = (prompt_tokens * price_in + completion_tokens * price_out) / 1e6
        self.stats.cost_usd += cost
        return prompt_tokens, completion_tokens, cost

    # -- JSON grades (the RL reward's LLM grader, emray/rl/rewards.py) ----------------------------
    def grade_params(self, schema: dict, max_tokens: int) -> dict:
        """A structured-output request: the reply's text must follow ``schema`` (OpenAI json_schema)."""
        return {
            "temperature": 0,
            "seed": 0,
            "max_tokens": max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "grade", "strict": True, "schema": schema},
            },
        }

    async def _grade_call(self, session: _Session, model: str, prompt: str, params: dict) -> tuple[str, dict]:
        body, estimate = await self._post(session, model, prompt, params)
        try:
            text = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise MalformedResponse("no choices[0].message.content in the response") from None
        if not isinstance(text, str):
            raise MalformedResponse("choices[0].message.content is not text")
        usage = body.get("usage") or {}
        self._settle_tokens(session, usage, estimate)
        return text, usage

    async def agrade_many(self, prompts: list[str], schema: dict, model: str, max_tokens: int = 64) -> list[str | None]:
        """The grader's reply text per prompt (None where it failed after retries), cached like judgments.

        The replies are not parsed here: a reply that is not the schema's JSON is the caller's to count.
        """
        model = self.cfg.model or model
        params = self.grade_params(schema, max_tokens)
        keys = [judge_cache_key(self.identity, model, self._messages(p), params) for p in prompts]
        replies: dict[str, str | None] = {}
        todo: dict[str, str] = {}
        for key, prompt in zip(keys, prompts):
            hit = self.cache.get(key) if self.cache is not None and key not in replies else None
            if hit is not None and "text" in hit:
                self.stats.cache_hits += 1
                replies[key] = hit["text"]
            elif key not in replies:
                todo.setdefault(key, prompt)
        self.stats.requests += len(set(keys))

        async def one(key: str, prompt: str) -> None:
            session = self._session_here()
            try:
                text, usage = await self._retrying(lambda: self._grade_call(session, model, prompt, params))
            except JudgeError:
                replies[key] = None
                return
            prompt_tokens, completion_tokens, _ = self._count_usage(model, usage)
            if self.cache is not None:
                self.cache.put(
                    key,
                    {
                        "text": text,
                        "model": model,
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
                    },
                )
            replies[key] = text

        await asyncio.gather(*(one(k, p) for k, p in todo.items()))
        return [replies[k] for k in keys]

    def grade_many(self, prompts: list[str], schema: dict, model: str, max_tokens: int = 64) -> list[str | None]:
        """Synchronous ``agrade_many``."""

        return self._run_sync(lambda: self.agrade_many(prompts, schema, model, max_tokens))

    async def _judge_one(self, request: JudgeRequest, key: str) -> JudgeResult:
        model = self.cfg.model or request.model
        session = self._session_here()
        top, usage = await self._retrying(lambda: self._call(session, model, request.prompt))
        prompt_tokens, completion_tokens, cost = self._count_usage(model, usage)
        if self.cache is not None:
            self.cache.put(
                key,
                {
                    "top_logprobs": top,
                    "model": model,
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
                },
            )
        score = score_from_logprobs(top, MIN_NUMERIC_MASS)
        return JudgeResult(score, top, False, False, prompt_tokens, completion_tokens, cost)

    async def ajudge_many(
        self, requests: Iterable[JudgeRequest], progress: bool | str = False, max_failure_rate: float = 0.0
    ) -> list[JudgeResult]:
        """One result per request, in order. Identical requests are judged once.

        Raises JudgeError when more than ``max_failure_rate`` of the judgments failed; at or below
        it, a failed judgment is a result with ``failed=True`` and no score. Every finished one is
        cached first, so a re-run asks only for the missing ones.
        """
        requests = [r if isinstance(r, JudgeRequest) else JudgeRequest(*r) for r in requests]
        keys = [self.key_for(r) for r in requests]
        unique: dict[str, JudgeRequest] = {}
        for key, request in zip(keys, requests):
            unique.setdefault(key, request)
        self.stats.requests += len(unique)
        results: dict[str, JudgeResult] = {}
        todo = []
        for key, request in unique.items():
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                self.stats.cache_hits += 1
                top = [tuple(p) for p in hit["top_logprobs"]]
                results[key] = JudgeResult(score_from_logprobs(top, MIN_NUMERIC_MASS), top, cached=True)
            else:
                todo.append((key, request))
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=progress if isinstance(progress, str) else "judge", unit="call")

        async def run(key: str, request: JudgeRequest):
            try:
                results[key] = await self._judge_one(request, key)
            finally:
                if bar is not None:
                    bar.update(1)

        outcomes = await asyncio.gather(*(run(k, r) for k, r in todo), return_exceptions=True)
        if bar is not None:
            bar.close()
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        check_failure_rate(len(errors), len(unique), max_failure_rate, errors[0] if errors else None)
        for key, _ in todo:
            results.setdefault(key, JudgeResult(None, [], failed=True))
        return [results[k] for k in keys]

    def judge_many(
        self, requests: Iterable[JudgeRequest], progress: bool | str = False, max_failure_rate: float = 0.0
    ) -> list[JudgeResult]:
        """Synchronous ``ajudge_many`` (runs its own event loop; not callable from inside one)."""

        return self._run_sync(lambda: self.ajudge_many(requests, progress, max_failure_rate))

    def _run_sync(self, make_coroutine):
        """Run ``make_coroutine()`` to completion from synchronous code, closing the HTTP session after."""

        async def main():
            try:
                return await make_coroutine()
            finally:
                await self.aclose_session()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        # Called from inside an event loop (a notebook, an async trial): run ours on a worker thread.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, main()).result()

    def get_stats(self) -> dict[str, Any]:
        return self.stats.as_dict()
