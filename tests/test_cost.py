"""Cost fields (emray/sweep/cost.py): a trial's accelerator-seconds by phase and judge usage, arm means and
totals, the overhead against none, the sweep's totals in cost.json, and each judgment's own usage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_run_config

from emray.sweep.cost import COST_FIELDS, PHASES, add_overheads, arm_cost, sweep_cost, trial_cost


def _eval_dir(path: Path, generate: float, judge: float, benign: float, calls: int, usd: float) -> Path:
    path.mkdir(parents=True)
    timing = {"generate_s": generate, "judge_s": judge, "benign_s": benign}
    own = {"calls": calls, "prompt_tokens": 100 * calls, "completion_tokens": calls, "cost_usd": usd}
    (path / "criteria.json").write_text(json.dumps({"timing": timing, "judge": {"own": own}}))
    return path


def test_trial_cost_sums_its_phases(tmp_path):
    run = make_run_config(tmp_path, resources={"num_workers": 2, "cpus_per_worker": 3})
    narrow = _eval_dir(tmp_path / "eval", 10.0, 4.0, 0.0, calls=20, usd=0.01)
    benign = _eval_dir(tmp_path / "benign" / "eval", 0.0, 0.0, 6.0, calls=0, usd=0.0)
    cost = trial_cost(run.resources, {"fit_s": 100.0, "benign_fit_s": 50.0, "wandb_s": 9.0}, [narrow, benign])
    # on CPUs an accelerator is a core: a fine-tune holds 2 workers x 3, an evaluation 3
    assert cost["cost_train_s"] == 600.0 and cost["cost_benign_train_s"] == 300.0
    assert cost["cost_generate_s"] == (10.0 + 6.0) * 3 and cost["cost_judge_s"] == 4.0 * 3
    assert cost["cost_accelerator_s"] == sum(cost[f"cost_{p}_s"] for p in PHASES) == 960.0
    assert (cost["device_kind"], cost["devices"]) == ("cpu", 6.0)
    assert (cost["judge_calls"], cost["judge_prompt_tokens"], cost["judge_completion_tokens"]) == (20, 2000, 20)
    assert cost["judge_cost_usd"] == 0.01
    missing = trial_cost(run.resources, {}, [tmp_path / "nowhere"])  # no evaluation folder: zero, not an error
    assert missing["cost_accelerator_s"] == 0 and missing["judge_calls"] == 0


def _trial(label: str, seconds: float, usd: float) -> dict:
    return {
        "label": label,
        "model": "m",
        "cost_accelerator_s": seconds,
        "judge_calls": 10,
        "judge_cost_usd": usd,
        "device_kind": "cpu",
        **{f"cost_{p}_s": seconds / 4 for p in PHASES},
    }


def test_arm_and_sweep_totals():
    trials = [_trial("none", 100.0, 0.5), _trial("none", 300.0, 0.5), _trial("kl", 500.0, 1.0)]
    arms = add_overheads(
        [{"label": "none", "model": "m", **arm_cost(trials[:2])}, {"label": "kl", "model": "m", **arm_cost(trials[2:])}]
    )
    assert arms[0]["cost_accelerator_s"] == 200.0 and arms[0]["cost_accelerator_s_total"] == 400.0
    assert arms[0]["judge_calls_total"] == 20 and arms[0]["cost_overhead"] == 1.0
    assert arms[1]["cost_overhead"] == 2.5
    total = sweep_cost(trials)
    assert total["trials"] == 3 and total["cost_accelerator_s"] == 900.0 and total["judge_calls"] == 30
    assert total["judge_cost_usd"] == 2.0
    for key in (k for k in COST_FIELDS if k in total):  # the sweep's total: the sum of the arms', field by field
        assert total[key] == pytest.approx(sum(a[f"{key}_total"] for a in arms))
    assert "cost_accelerator_s" not in sweep_cost([{"label": "old"}])  # records from before the cost fields


def test_results_carry_cost(tmp_path):
    from emray.sweep.pareto import write_results

    rows = [
        {**_trial("none", 100.0, 0.0), "trial_key": "a", "seed": 0},
        {**_trial("kl", 150.0, 0.0), "trial_key": "b", "seed": 0},
    ]
    write_results(tmp_path, rows)
    arms = [json.loads(line) for line in (tmp_path / "arms.jsonl").read_text().splitlines()]
    assert [a["cost_overhead"] for a in arms] == [1.0, 1.5]
    assert json.loads((tmp_path / "cost.json").read_text())["cost_accelerator_s"] == 250.0


def test_each_judgment_carries_its_own_usage():
    from emray.config.eval import JudgeConfig
    from emray.eval.judge import JudgeClient, JudgeRequest, judgment_usage

    cfg = JudgeConfig(base_url="local", backend="fixed", cache=False, price_input_per_1m=1.0, price_output_per_1m=2.0)
    with JudgeClient(cfg) as client:
        requests = [JudgeRequest("a prompt"), JudgeRequest("a prompt"), JudgeRequest("another prompt")]
        results = client.judge_many(requests)
        usage = judgment_usage(results)
        stats = client.get_stats()
    assert usage["calls"] == 2  # the repeated prompt is judged once
    assert usage["prompt_tokens"] == stats["prompt_tokens"] > 0 and usage["completion_tokens"] == 2
    assert usage["cost_usd"] == pytest.approx(stats["cost_usd"]) and usage["cost_usd"] > 0
