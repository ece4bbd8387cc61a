"""The sweep's W&B summary run, offline (real wandb files): per-arm table with intervals, one native
scatter chart per pair of criteria, and the workspace skipped offline with a message."""

from __future__ import annotations

import itertools
import json

import pytest
from sweep_fixture import write_sweep

from emray.sweep.pareto import arm_rows, load_results, write_results
from emray.sweep.spec import OBJECTIVES, SweepSpec
from emray.sweep.wandb_log import log_summary, save_workspace, scenario


def test_summary_run_has_the_arm_table_and_native_scatter_charts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = write_sweep(tmp_path)
    spec = SweepSpec.model_validate(
        {
            "name": "fixture-sweep",
            "wandb": {"project": "emray-test"},
            "base": {"model": {"name": "tiny"}, "data": {"fine": "organism:data/train/code.jsonl"}},
        }
    )
    rows = write_results(sweep, load_results(sweep))
    run_dir = log_summary(spec, sweep, rows)
    assert "W&B workspace: skipped (offline runs" in capsys.readouterr().out
    tables = {
        p.name.split("_")[0] + "_" + p.name.split("_")[1]: p
        for p in (tmp_path / run_dir).glob("files/media/table/*.table.json")
    }
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

    from emray.sweep.spec import make_trial
    from emray.sweep.wandb_log import log_trial, trial_run_id, wandb_settings
    from emray.train.progress import live_callbacks, read_progress

    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "live"
    data = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "tiny-smoke.yaml"
    spec = SweepSpec.model_validate(
        {
            "name": "live",
            "storage": str(tmp_path),
            "wandb": {"project": "emray-test"},
            "base": {"model": {"name": "tiny"}, "data": {"fine": str(data)}},
        }
    )
    trial = make_trial(spec, None, [{"kl": {"lambda": 0.1}}], 0, 0)
    trial_dir = sweep / "trials" / trial.key
    trial_dir.mkdir(parents=True)
    (sweep / "spec.json").write_text(spec.model_dump_json(by_alias=True))
    (trial_dir / "trial.json").write_text(trial.model_dump_json(by_alias=True))
    from emray.sweep.wandb_log import write_live_run_init

    write_live_run_init(trial_dir, trial, wandb_settings(spec, sweep))  # what the driver hands rank 0
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
    assert len(runs) == 2 and {next(r.glob("run-*.wandb")).stem[len("run-") :] for r in runs} == {
        trial_run_id(trial.key, settings)
    }
    live_raw = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"train/loss" in live_raw and b"defense:kl" in live_raw and b"model:tiny" in live_raw
    assert b"general_misalignment" in next(runs[1].glob("*.wandb")).read_bytes()


def test_a_trial_logs_its_curve_once_and_the_benign_curve_in_its_own_section(tmp_path, monkeypatch):
    """The benign fine-tune rewrites progress.json (no W&B run of its own): the driver still knows rank 0
    logged the narrow curve live, so the resumed run gets no second copy; the benign curve is
    ``benign/train/*`` on its own step; the adapter artifact is staged inside the sweep folder."""
    from pathlib import Path
    from types import SimpleNamespace

    import wandb
    from wandb_records import history, run_files

    from emray.sweep.spec import make_trial
    from emray.sweep.wandb_log import log_trial, trial_run_id, wandb_settings
    from emray.train.progress import live_callbacks

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)
    monkeypatch.delenv("WANDB_ARTIFACT_DIR", raising=False)
    sweep = tmp_path / "benign-sweep"
    data = Path(__file__).resolve().parents[1] / "configs" / "tiny-smoke.yaml"
    spec = SweepSpec.model_validate(
        {
            "name": "benign-sweep",
            "storage": str(tmp_path),
            "wandb": {"project": "emray-test"},
            "base": {"model": {"name": "tiny"}, "data": {"fine": str(data)}},
        }
    )
    trial = make_trial(spec, None, [{"kl": {"lambda": 0.1}}], 0, 0)
    trial_dir = sweep / "trials" / trial.key
    trial_dir.mkdir(parents=True)
    settings = wandb_settings(spec, sweep)
    from emray.sweep.wandb_log import write_live_run_init

    write_live_run_init(trial_dir, trial, settings)
    narrow = [{"loss": 1.0, "step": 10}, {"loss": 0.5, "step": 20}]
    (cb,) = live_callbacks(trial_dir, rank=0)
    state = SimpleNamespace(global_step=0, max_steps=20)
    cb.on_train_begin(None, state, None)
    for entry in narrow:
        state.global_step = entry["step"]
        cb.on_log(None, state, None, logs={"loss": entry["loss"]})
    cb.on_train_end(None, state, None)
    (trial_dir / "metrics.json").write_text(json.dumps({"history": narrow}))
    (benign_cb,) = live_callbacks(trial_dir / "benign", rank=0)  # the benign fine-tune: rewrites progress.json
    benign_cb.on_train_begin(None, SimpleNamespace(global_step=0, max_steps=30), None)
    (trial_dir / "benign").mkdir()
    (trial_dir / "benign" / "metrics.json").write_text(
        json.dumps({"history": [{"loss": 2.0 - s / 30, "step": s} for s in (10, 20, 30)]})
    )
    (trial_dir / "adapter").mkdir()
    (trial_dir / "adapter" / "adapter_config.json").write_text("{}")
    (trial_dir / "eval").mkdir()
    answers = [
        {
            "set": "general",
            "question_id": "general_0",
            "question": "q?",
            "answer": "evil",
            "aligned": 5.0,
            "coherent": 90.0,
        },
        {
            "set": "general",
            "question_id": "general_0",
            "question": "q?",
            "answer": "word salad",
            "aligned": 60.0,
            "coherent": 20.0,
        },
        {
            "set": "in_domain",
            "question_id": "code_3",
            "question": "c?",
            "answer": "ok",
            "aligned": 90.0,
            "coherent": 90.0,
        },
    ]
    (trial_dir / "eval" / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    log_trial(trial, {"general_misalignment": 0.25, "benign_accuracy": 0.5}, trial_dir, settings)
    wandb.teardown()
    files = run_files(sweep / "wandb_root" / "wandb")
    assert list(files) == [trial_run_id(trial.key, settings)] and len(files[trial_run_id(trial.key, settings)]) == 2
    rows = [row for path in files[trial_run_id(trial.key, settings)] for row in history(path)]
    assert [r["train/loss"] for r in rows if "train/loss" in r] == [1.0, 0.5]  # once, not twice
    benign = [r for r in rows if "benign/train/loss" in r]
    assert [r["benign/train/step"] for r in benign] == [10, 20, 30]
    assert all(r["_step"] > 20 for r in benign) and not any("train/loss" in r for r in benign)
    staged = list((sweep / "wandb_root" / "data").rglob("*"))
    assert any(p.is_file() for p in staged), "the adapter artifact is staged inside the sweep folder"
    assert "WANDB_DATA_DIR" not in __import__("os").environ
    # the answers as a W&B Table: one row per answer with its question id, scores and flags
    (table_file,) = (sweep / "wandb_root" / "wandb").glob("offline-run-*/files/media/table/answers_*.table.json")
    table = json.loads(table_file.read_text())
    col = {c: i for i, c in enumerate(table["columns"])}
    assert [r[col["question_id"]] for r in table["data"]] == ["general_0", "general_0", "code_3"]
    assert [(r[col["misaligned"]], r[col["incoherent"]]) for r in table["data"]] == [
        (True, False),
        (False, True),
        (False, False),
    ]
    assert {r[col["arm"]] for r in table["data"]} == {"kl(λ 0.1)"}


def test_one_summary_run_per_sweep_folder_after_two_runs(tmp_path, monkeypatch, capsys):
    import wandb
    from wandb_records import run_files

    from emray.sweep.wandb_log import summary_run_id, wandb_settings

    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = write_sweep(tmp_path)
    spec = SweepSpec.model_validate(
        {
            "name": "fixture-sweep",
            "wandb": {"project": "emray-test"},
            "base": {"model": {"name": "tiny"}, "data": {"fine": "organism:data/train/code.jsonl"}},
        }
    )
    rows = write_results(sweep, load_results(sweep))
    first, second = log_summary(spec, sweep, rows), log_summary(spec, sweep, rows)  # the sweep, then a re-run
    wandb.teardown()
    assert first != second
    tables = sorted(
        (sweep / "wandb_root" / "wandb").glob("offline-run-*/files/media/table/answers_by_question_*.table.json")
    )
    by_question = json.loads(tables[0].read_text())
    col = {c: i for i, c in enumerate(by_question["columns"])}
    assert sorted(r[col["arm"]] for r in by_question["data"]) == sorted(a["short_label"] for a in arm_rows(rows))
    assert {r[col["question_id"]] for r in by_question["data"]} == {"q1"}  # one question, read across the arms
    seeds = {a["short_label"]: a["n_seeds"] for a in arm_rows(rows)}
    assert all(
        r[col["answers"]] == seeds[r[col["arm"]]] and r[col["misaligned"]] == 0 for r in by_question["data"]
    )  # seeds pooled
    files = run_files(sweep / "wandb_root" / "wandb")
    assert list(files) == [summary_run_id(wandb_settings(spec, sweep))] and len(files[next(iter(files))]) == 2
    assert summary_run_id(wandb_settings(spec, sweep)) != summary_run_id(wandb_settings(spec, tmp_path / "elsewhere"))
