"""`emray select` end to end on tiny: a two-adapter ensemble trained from the EM sets, the real
WildGuardMix pool, Interleaving++ dropping its refusals; a second run computes nothing; a trial
reads the selection as an artifact."""

import csv
import math
import random

import pytest
from conftest import SHARED_DATA

from emray.score.select import is_refusal


@pytest.fixture
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_select_end_to_end(tmp_path, monkeypatch, capsys, ray_local):
    from emray.cli import main
    from emray.config import load_run_config
    from emray.score import nll, pool
    from emray.score.select import read_summary
    from emray.stages import ensemble
    from emray.stages import selection as stages
    from emray.train.sft import run_sft

    monkeypatch.setenv("EMRAY_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"name: e2e\noutput_dir: {tmp_path}\nmodel: {{name: tiny}}\nlora: {{r: 4, alpha: 8}}\n"
        f"data: {{fine: {SHARED_DATA}/train/medical.jsonl, safe_pool: {SHARED_DATA}/safe/wildguard_sample.jsonl, max_examples: 40}}\n"
        "train: {max_steps: 1, batch_size: 4, max_len: 256, lr: 1.0e-3, progress: false}\n"
    )
    ens = ["--adapters", f"{SHARED_DATA}/train/code.jsonl", f"{SHARED_DATA}/train/legal.jsonl", "--ensemble-steps", "3"]
    argv = ["select", str(cfg), "--method", "interleave_pp", "--fraction", "0.2", *ens, "--workers", "2"]

    # Too small a pool is a clear error, before anything is trained.
    assert main(["select", str(cfg), "--method", "interleave_pp", "--fraction", "0.9", *ens]) == 2
    assert "360 safe samples needed, 100 available" in capsys.readouterr().err

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len(ensemble.TRAINED) >= 2 and stages.SCORED[-1] == ["aligned", "mis0", "mis1"]
    selected = stages.ensure_selection(
        load_run_config(cfg),
        "interleave_pp",
        stages.params_from_config(
            load_run_config(cfg), "interleave_pp", safe_fraction=0.2, ensemble=ens[1:3], ensemble_steps=3
        ),
        progress=False,
    )
    summary = read_summary(selected)
    assert summary["pool_size"] == 293 and summary["refusals_dropped"] == summary["refusals_in_pool"] > 100
    assert summary["selected"] == 10 and summary["selected_refusals"] == 0  # 40 * 0.2 / 0.8
    assert f"refusals dropped: {summary['refusals_dropped']}" in out and "histogram" in out
    assert len(selected.read_text().splitlines()) == 10

    # Second run: every stage is cached, so no training, no scorer, no forward pass.
    trained, scored, forwards = len(ensemble.TRAINED), len(stages.SCORED), nll.FORWARD_CALLS
    monkeypatch.setattr(pool.ScorerPool, "__enter__", lambda self: pytest.fail("the scorer was started"))
    assert main(argv) == 0
    assert "selection: cached" in capsys.readouterr().err
    # Interleaving+ on the same ensemble reuses the pool scores (and may pick refusals).
    assert main(["select", str(cfg), "--method", "interleave_plus", "--fraction", "0.2", *ens]) == 0
    plus = capsys.readouterr().out
    assert "refusals dropped: 0" in plus
    # `emray score` on the same ensemble writes the table from the cache.
    assert main(["score", str(cfg), *ens, "--out", str(tmp_path / "scores")]) == 0
    table = list(csv.reader(open(tmp_path / "scores" / "scores.csv")))
    assert len(table) == 294 and table[0][:5] == ["index", "aligned", "mis0", "mis1", "s_d(eps=1.0)"]
    # The selection, recomputed directly from the score table: the non-refusal rows by s_d, the top
    # ceil(5 % of 293) = 15 of them, 10 drawn with the run's seed (0).
    from emray.data.chat import final_answer, load_safe_pool

    rows = load_safe_pool(SHARED_DATA / "safe" / "wildguard_sample.jsonl")
    s_d = {int(r[0]): float(r[4]) for r in table[1:]}
    keep = [i for i in range(293) if not is_refusal(final_answer(rows[i]))]
    best = sorted(keep, key=lambda i: (math.isnan(s_d[i]), 0 if math.isnan(s_d[i]) else -s_d[i], i))[:15]  # NaN last
    assert summary["top"] == 15 and summary["selected_indices"] == random.Random(0).sample(best, 10)
    # --top-k: the strict top 10, best first, from the same cached scores
    assert main(argv + ["--top-k"]) == 0 and "the strict top by s_d" in capsys.readouterr().out
    strict = stages.params_from_config(
        load_run_config(cfg), "interleave_pp", safe_fraction=0.2, ensemble=ens[1:3], ensemble_steps=3
    ).model_copy(update={"quantile": None})
    assert (
        read_summary(stages.ensure_selection(load_run_config(cfg), "interleave_pp", strict, progress=False))[
            "selected_indices"
        ]
        == best[:10]
    )
    assert (len(ensemble.TRAINED), len(stages.SCORED), nll.FORWARD_CALLS) == (trained, scored, forwards)

    # A trial gets the selection as an artifact and trains on D_fine + D_safe.
    trial = load_run_config(cfg, ["defenses=[{interleave_pp: {safe_fraction: 0.2}}]"])
    result = run_sft(trial, run_dir=tmp_path / "trial", artifacts={"safe_selection": str(selected)})
    assert result.metrics["num_examples"] == 50
