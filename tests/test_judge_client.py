"""The judge client through the real openai client against a real local HTTP server:
retries under injected failures, rate limits, caching, resume after a kill, secrets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from emray.config.eval import JudgeConfig
from emray.eval.judge import JudgeClient, JudgeError, JudgeRequest, TokenBucket
from emray.eval.judge_cache import JudgeCache
from emray.judge_server import start_judge_server
from emray.judge_server.backends import Backend, Fault, register_backend
from emray.judge_server.backends.fixed import FixedBackend

EXPECTED = FixedBackend()  # the hash score the server's fixed backend gives each prompt


def config(url: str, tmp_path, **kw) -> JudgeConfig:
    base = dict(base_url=url, cache_path=str(tmp_path / "judge.sqlite"), backoff_base_s=0.005, backoff_max_s=0.05)
    return JudgeConfig(**{**base, **kw})


def requests(n: int, tag: str = "") -> list[JudgeRequest]:
    return [JudgeRequest(f"judge prompt {tag}{i}", "gpt-4o-mini-2024-07-18") for i in range(n)]


def test_1000_judgments_under_30pct_failures_each_present_once(tmp_path):
    server = start_judge_server("flaky", {"failure_rate": 0.3, "timeout_delay_s": 2.0, "seed": 1})
    try:
        client = JudgeClient(config(server.url, tmp_path, timeout_s=0.5, max_retries=20, concurrency=64))
        reqs = requests(1000)
        results = client.judge_many(reqs)
        stats = client.get_stats()
        counts = dict(server.counts)
    finally:
        server.stop()
    assert len(results) == 1000
    assert [r.score for r in results] == [EXPECTED.judge(r.prompt) for r in reqs]  # each in its own place
    assert counts["ok"] == 1000  # exactly one successful call per judgment
    for kind in ("429", "500", "timeout", "malformed"):
        assert counts[f"fault:{kind}"] > 0 and stats["errors"][kind] > 0
    assert stats["retries"] == stats["calls"] - 1000 > 200
    assert stats["failures"] == 0
    assert len(JudgeCache(tmp_path / "judge.sqlite")) == 1000


def test_rerun_is_served_from_cache(tmp_path):
    with start_judge_server("fixed") as server:
        first = JudgeClient(config(server.url, tmp_path)).judge_many(requests(50))
        assert server.counts["requests"] == 50
        client = JudgeClient(config(server.url, tmp_path))
        again = client.judge_many(requests(50))
        assert server.counts["requests"] == 50  # no new call
    assert [r.score for r in again] == [r.score for r in first]
    assert all(r.cached for r in again) and client.get_stats()["cache_hits"] == 50


def test_duplicate_requests_are_judged_once(tmp_path):
    with start_judge_server("fixed") as server:
        reqs = requests(5) * 4
        results = JudgeClient(config(server.url, tmp_path, cache=False)).judge_many(reqs)
        assert server.counts["requests"] == 5
    assert [r.score for r in results] == [EXPECTED.judge(r.prompt) for r in reqs]


def test_gives_up_after_max_retries_with_a_clear_error(tmp_path):
    with start_judge_server("flaky", {"failure_rate": 1.0, "kinds": ["500"]}) as server:
        client = JudgeClient(config(server.url, tmp_path, max_retries=2))
        with pytest.raises(JudgeError, match=r"1 of 1 judgments failed.*gave up after 2 retries.*InternalServerError"):
            client.judge_many(requests(1))
        assert server.counts["fault:500"] == 3  # first try + 2 retries, then stop
    assert client.get_stats()["failures"] == 1


class Unauthorized(Backend):
    async def top_logprobs(self, model, messages, top_k):
        raise Fault(401, kind="auth")


def test_requests_per_minute_limit(tmp_path):
    with start_judge_server("fixed") as server:
        client = JudgeClient(config(server.url, tmp_path, cache=False, requests_per_minute=1200, concurrency=64))
        start = time.monotonic()
        client.judge_many(requests(60))
        elapsed = time.monotonic() - start
    # 20/s with a burst of 20: the other 40 wait ~2 s
    assert 1.8 <= elapsed < 10, elapsed


def test_tokens_per_minute_limit(tmp_path):
    prompt = "x" * 368  # estimated at 368 / 4 + 8 + 1 = 101 tokens
    reqs = [JudgeRequest(prompt + str(i)) for i in range(30)]
    with start_judge_server("fixed") as server:
        client = JudgeClient(config(server.url, tmp_path, cache=False, tokens_per_minute=60 * 1000, concurrency=64))
        start = time.monotonic()
        client.judge_many(reqs)
        elapsed = time.monotonic() - start
    assert 1.5 <= elapsed < 10, elapsed  # ~1,000 tokens/s: ~10 requests/s after a burst of ~10


def test_token_bucket_paces_to_its_rate():
    async def main():
        bucket = TokenBucket(rate_per_minute=6000)  # 100/s, burst 100
        start = time.monotonic()
        for _ in range(150):
            await bucket.acquire(1)
        return time.monotonic() - start

    assert 0.4 <= asyncio.run(main()) < 2.0


def test_api_key_never_stored(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("EMRAY_TEST_JUDGE_KEY", secret)
    with start_judge_server("fixed") as server:
        client = JudgeClient(config(server.url, tmp_path, api_key_env="EMRAY_TEST_JUDGE_KEY"))
        client.judge_many(requests(3))
        assert secret not in repr(client) and secret not in str(client.get_stats())
        assert secret not in client.cfg.model_dump_json()
    for path in tmp_path.iterdir():
        assert secret.encode() not in path.read_bytes(), path


def test_missing_key_for_a_remote_judge_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("EMRAY_NO_SUCH_KEY", raising=False)
    with pytest.raises(JudgeError, match="EMRAY_NO_SUCH_KEY"):
        JudgeClient(config("https://api.example.com/v1", tmp_path, api_key_env="EMRAY_NO_SUCH_KEY"))


_WORKER = """
import sys
from emray.config.eval import JudgeConfig
from emray.eval.judge import JudgeClient, JudgeRequest
url, cache = sys.argv[1], sys.argv[2]
cfg = JudgeConfig(base_url=url, cache_path=cache, concurrency=4)
JudgeClient(cfg).judge_many([JudgeRequest(f"judge prompt {i}", "gpt-4o-mini-2024-07-18") for i in range(300)])
"""


def test_killed_run_resumes_and_calls_only_the_missing(tmp_path):
    cache_path = tmp_path / "judge.sqlite"
    with start_judge_server("flaky", {"failure_rate": 0.0, "latency_s": 0.02}) as server:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, server.url, str(cache_path)], env={**os.environ, "PYTHONPATH": os.getcwd()}
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if cache_path.exists() and len(JudgeCache(cache_path)) >= 100:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        done = len(JudgeCache(cache_path))
        assert 100 <= done < 300
        served_before = server.counts["ok"]
        client = JudgeClient(config(server.url, tmp_path))
        results = client.judge_many(requests(300))
        assert server.counts["ok"] - served_before == 300 - done
    assert client.get_stats()["cache_hits"] == done
    assert [r.score for r in results] == [EXPECTED.judge(f"judge prompt {i}") for i in range(300)]


def test_sync_call_from_inside_an_event_loop(tmp_path):
    with start_judge_server("fixed") as server:
        client = JudgeClient(config(server.url, tmp_path))

        async def inside():
            return client.judge_many(requests(3))

        results = asyncio.run(inside())
    assert [r.score for r in results] == [EXPECTED.judge(r.prompt) for r in requests(3)]


class NoQuota(Backend):
    async def top_logprobs(self, model, messages, top_k):
        raise Fault(
            429,
            body=b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",'
            b' "code": "insufficient_quota"}}',
            kind="quota",
        )


@pytest.mark.parametrize(
    "name, backend, error",
    [
        ("unauthorized", Unauthorized, "not retryable: AuthenticationError"),
        ("no-quota", NoQuota, "not retryable: RateLimitError.*quota"),  # a 429 that waiting will not fix
    ],
)
def test_client_errors_are_not_retried(tmp_path, name, backend, error):
    register_backend(name, backend)
    with start_judge_server(name) as server:
        client = JudgeClient(config(server.url, tmp_path, max_retries=5))
        with pytest.raises(JudgeError, match=error):
            client.judge_many(requests(1))
        assert server.counts["requests"] == 1


def test_local_judge_cache_survives_a_new_port(tmp_path):
    cfg = JudgeConfig(base_url="local", backend="fixed", cache_path=str(tmp_path / "judge.sqlite"))
    with start_judge_server("fixed") as first:
        JudgeClient(cfg, base_url=first.url).judge_many(requests(10))
    with start_judge_server("fixed") as second:  # another port: a restarted sweep
        client = JudgeClient(cfg, base_url=second.url)
        client.judge_many(requests(10))
        assert second.counts["requests"] == 0 and client.get_stats()["cache_hits"] == 10
