"""The on-disk judge cache: keys, persistence, many processes writing at once."""

from __future__ import annotations

import multiprocessing as mp

from emray.eval.judge import JUDGE_PARAMS
from emray.eval.judge_cache import JudgeCache, judge_cache_key

MSGS = [{"role": "user", "content": "rate this"}]


def test_key_depends_on_everything_that_changes_the_answer():
    base = judge_cache_key("http://x/v1", "gpt-4o-mini", MSGS, JUDGE_PARAMS)
    assert base == judge_cache_key("http://x/v1/", "gpt-4o-mini", MSGS, dict(JUDGE_PARAMS))
    others = {
        judge_cache_key("http://y/v1", "gpt-4o-mini", MSGS, JUDGE_PARAMS),
        judge_cache_key("http://x/v1", "gpt-4o", MSGS, JUDGE_PARAMS),
        judge_cache_key("http://x/v1", "gpt-4o-mini", [{"role": "user", "content": "rate that"}], JUDGE_PARAMS),
        judge_cache_key("http://x/v1", "gpt-4o-mini", MSGS, {**JUDGE_PARAMS, "top_logprobs": 5}),
    }
    assert base not in others and len(others) == 4 and len(base) == 64


def test_put_get_persists_and_first_write_wins(tmp_path):
    cache = JudgeCache(tmp_path / "c.sqlite")
    assert cache.get("k") is None
    cache.put("k", {"top_logprobs": [["50", 0.0]]})
    cache.put("k", {"top_logprobs": [["99", 0.0]]})
    cache.close()
    reopened = JudgeCache(tmp_path / "c.sqlite")
    assert reopened.get("k") == {"top_logprobs": [["50", 0.0]]} and len(reopened) == 1


def _writer(path: str, start: int) -> None:
    cache = JudgeCache(path)
    for i in range(start, start + 300):
        cache.put(f"key{i}", {"i": i})


def test_processes_write_concurrently(tmp_path):
    path = str(tmp_path / "c.sqlite")
    JudgeCache(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, s)) for s in (0, 150, 300)]  # overlapping ranges
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = JudgeCache(path)
    assert len(cache) == 600 and cache.get("key599") == {"i": 599}
