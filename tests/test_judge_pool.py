"""The judge as a Ray actor pool shared by trials: same answers as the local client, shared cache."""

from __future__ import annotations

import pytest

from emray.config.eval import JudgeConfig
from emray.eval.judge import JudgeRequest
from emray.eval.judge_pool import JudgePool, split_config
from emray.judge_server import start_judge_server
from emray.judge_server.backends.fixed import FixedBackend


def test_split_config_divides_limits():
    cfg = split_config(JudgeConfig(concurrency=10, requests_per_minute=600, tokens_per_minute=1000), 4)
    assert cfg.concurrency == 3 and cfg.requests_per_minute == 150 and cfg.tokens_per_minute == 250


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():  # another module's session: share it
        yield ray
        return
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, namespace="emray-test")
    yield ray
    ray.shutdown()


def test_pool_judges_and_is_shared_by_trials(ray_session, tmp_path, shared_data):
    ray = ray_session
    expected = FixedBackend()
    with start_judge_server("flaky", {"failure_rate": 0.2, "seed": 3}) as server:
        cfg = JudgeConfig(
            base_url=server.url,
            cache_path=str(tmp_path / "judge.sqlite"),
            concurrency=16,
            backoff_base_s=0.005,
            max_retries=20,
        )
        pool = JudgePool.create(cfg, num_actors=2, name="test-judge")
        try:
            reqs = [JudgeRequest(f"prompt {i}") for i in range(120)] + [JudgeRequest("prompt 7")]
            results = pool.judge_many(reqs)
            assert [r.score for r in results] == [expected.judge(r.prompt) for r in reqs]
            assert server.counts["ok"] == 120

            @ray.remote(num_cpus=0)
            def trial(n: int) -> list:
                # a trial finds the running pool by name; everything judged before comes from the cache
                found = JudgePool.get("test-judge")
                return [r.score for r in found.judge_many([JudgeRequest(f"prompt {i}") for i in range(n)])]

            assert ray.get(trial.remote(130)) == [expected.judge(f"prompt {i}") for i in range(130)]
            assert server.counts["ok"] == 130
            stats = pool.get_stats()
            assert stats["cache_hits"] == 120 and stats["requests"] == 250 and stats["retries"] > 0

            # evaluate() takes the pool where it takes a client (what a sweep trial does)
            from conftest import make_run_config

            from emray.eval.run import evaluate

            run = make_run_config(
                tmp_path,
                eval={
                    "general": str(shared_data / "questions" / "general.yaml"),
                    "samples_per_paraphrase": 1,
                    "max_questions": 2,
                    "max_new_tokens": 8,
                },
            )
            criteria = evaluate(run, judge=pool, out_dir=tmp_path / "eval", progress=False)
            assert criteria["general_n"] == 2 and server.counts["ok"] == 134
        finally:
            pool.shutdown()
    with pytest.raises(ValueError, match="no judge pool named 'test-judge'"):
        JudgePool.get("test-judge")
