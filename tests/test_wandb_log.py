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
