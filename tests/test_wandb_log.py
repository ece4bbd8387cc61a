"""The sweep's W&B summary run, offline (real wandb files): per-arm table with intervals, one native
scatter chart per pair of criteria, and the workspace skipped offline with a message."""

from __future__ import annotations

import itertools
import json

import pytest

from emray.sweep.pareto import arm_rows, load_results, write_results
from emray.sweep.spec import OBJECTIVES, SweepSpec
from emray.sweep.wandb_log import log_summary, save_workspace, scenario
from sweep_fixture import write_sweep


def test_summary_run_has_the_arm_table_and_native_scatter_charts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = write_sweep(tmp_path)
    spec = SweepSpec.model_validate({"name": "fixture-sweep", "wandb": {"project": "emray-test"},
                                     "base": {"model": {"name": "tiny"}, "data": {"fine": "organism:data/train/code.jsonl"}}})
    rows = write_results(sweep, load_results(sweep))
    run_dir = log_summary(spec, sweep, rows)
    assert "W&B workspace: skipped (offline runs" in capsys.readouterr().out
    tables = {p.name.split("_")[0] + "_" + p.name.split("_")[1]: p for p in (tmp_path / run_dir).glob("files/media/table/*.table.json")}
    arm_table = json.loads(tables["pareto_arms"].read_text())
    arms = arm_rows(rows)
    assert [r[0] for r in arm_table["data"]] == [a["short_label"] for a in arms]
    col = arm_table["columns"].index("general_misalignment_hi")
    assert [r[col] for r in arm_table["data"]] == pytest.approx([a["general_misalignment_hi"] for a in arms])
    col = arm_table["columns"].index("general_unscored_rate")  # the unscored share beside the rates
    assert [r[col] for r in arm_table["data"]] == pytest.approx([a["general_unscored_rate"] for a in arms])
    import wandb

    wandb.teardown()  # the wandb-core service writes the run file; shutting it down flushes it
    raw = next((tmp_path / run_dir).glob("*.wandb")).read_bytes()
    assert raw.count(b"wandb/scatter/v0") == len(list(itertools.combinations(OBJECTIVES, 2)))
    for x, y in itertools.combinations(OBJECTIVES, 2):
        assert f"pareto/{x}__{y}".encode() in raw
    assert scenario(spec) == "code"


def test_workspace_messages_without_a_server():
    settings = {"mode": "disabled", "dir": "/x", "workspace": True}
    assert "skipped (disabled runs" in save_workspace(settings, list(OBJECTIVES))
    assert "off (wandb.workspace: false)" in save_workspace({**settings, "workspace": False}, [])


def test_rank0_logs_the_curve_live_and_the_driver_resumes_the_same_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import wandb

    from emray.sweep.live import live_callbacks, read_progress
    from emray.sweep.spec import make_trial
    from emray.sweep.wandb_log import log_trial, trial_run_id, wandb_settings

    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "live"
    data = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "tiny-smoke.yaml"
    spec = SweepSpec.model_validate({"name": "live", "storage": str(tmp_path), "wandb": {"project": "emray-test"},
                                     "base": {"model": {"name": "tiny"}, "data": {"fine": str(data)}}})
    trial = make_trial(spec, None, [{"kl": {"lambda": 0.1}}], 0, 0)
    trial_dir = sweep / "trials" / trial.key
    trial_dir.mkdir(parents=True)
    (sweep / "spec.json").write_text(spec.model_dump_json(by_alias=True))
    (trial_dir / "trial.json").write_text(trial.model_dump_json(by_alias=True))
    assert live_callbacks(trial_dir, rank=1) == []  # only rank 0 reports
    (cb,) = live_callbacks(trial_dir, rank=0)
    state = SimpleNamespace(global_step=0, max_steps=20)
    cb.on_train_begin(None, state, None)
    for step in (10, 20):
        state.global_step = step
        cb.on_log(None, state, None, logs={"loss": 2.0 / step})
        assert read_progress(trial_dir)["step"] == step  # what the live table shows
    cb.on_train_end(None, state, None)
    settings = wandb_settings(spec, sweep)
    assert cb.wandb_run.id == trial_run_id(trial.key, settings)
    log_trial(trial, {"general_misalignment": 0.25}, trial_dir, settings)
    wandb.teardown()
    runs = sorted((sweep / "wandb_root" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {next(r.glob("run-*.wandb")).stem[len("run-"):] for r in runs} == {trial_run_id(trial.key, settings)}
    live_raw = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"train/loss" in live_raw and b"defense:kl" in live_raw and b"model:tiny" in live_raw
    assert b"general_misalignment" in next(runs[1].glob("*.wandb")).read_bytes()
