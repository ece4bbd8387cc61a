"""``emray rejudge``: a finished sweep's stored answers scored again by another judge over real HTTP
(local judge servers), only the judge columns changing, with the agreement table. The sweep folder is
written here (trial.json + eval/answers.jsonl as emray/eval/run.py writes them); the end-to-end one on a
real sweep is in tests/test_sweep_e2e.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, make_run_config

from emray.configio import ConfigError
from emray.sweep.rejudge import JUDGE_COLUMNS, judge_config, kappa, rejudge_sweep

OLD_JUDGE = {"base_url": "local", "backend": "fixed", "backend_options": {"score": 90}}


def _answers(run) -> list[dict]:
    from emray.data.questions import load_questions
    from emray.eval.generate import question_items

    rows = []
    for set_name, domain, path in [("general", None, run.eval.general), ("in_domain", "code", run.eval.in_domain[0])]:
        for it in question_items(load_questions(path), set_name, 1, 3):
            it.pop("messages")
            rows.append({"set": set_name, "domain": domain, **it, "answer": f"answer {len(rows)}", "reasoning": None})
            rows[-1].update(aligned=90.0, coherent=90.0, raw_answer=rows[-1]["answer"])
    return rows


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    from emray.sweep.spec import Trial

    q = SHARED_DATA / "questions"
    eval_cfg = {"general": str(q / "general.yaml"), "in_domain": [str(q / "code.yaml")], "judge": OLD_JUDGE}
    for index, (label, seed) in enumerate([("none", 0), ("none", 1), ("inoculation", 0)]):
        run = make_run_config(tmp_path, eval=eval_cfg, seed=seed)
        trial = Trial(key=f"trial{index}", label=label, run=run, index=index)
        folder = tmp_path / "sweep" / "trials" / trial.key
        (folder / "eval").mkdir(parents=True)
        (folder / "trial.json").write_text(trial.model_dump_json(by_alias=True))
        (folder / "eval" / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _answers(run)))
        (folder / "result.json").write_text(json.dumps({"trial_key": trial.key, "label": label, "seed": seed}))
    return tmp_path / "sweep"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _snapshot(sweep: Path) -> dict[str, bytes]:
    return {str(p.relative_to(sweep)): p.read_bytes() for p in sweep.rglob("*") if p.is_file()}


def test_rejudge_changes_only_the_judge_columns(sweep, tmp_path):
    before = _snapshot(sweep)
    # the hash judge: a different score per prompt, so some answers flip to misaligned or incoherent
    out, agreement = rejudge_sweep(sweep, {"backend_options": {"score": None}}, name="hash")
    after = _snapshot(sweep)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing the sweep wrote changed
    for trial in (sweep / "trials").iterdir():
        old = _rows(trial / "eval" / "answers.jsonl")
        new = _rows(trial / "eval" / "rejudge" / "hash" / "answers.jsonl")
        assert len(old) == len(new)
        for a, b in zip(old, new):
            strip = lambda r: {k: v for k, v in r.items() if k not in JUDGE_COLUMNS}  # noqa: E731
            assert strip(a) == strip(b)
        assert any(a["aligned"] != b["aligned"] for a, b in zip(old, new))
    results = _rows(out / "results.jsonl")
    assert [r["trial_key"] for r in results] == ["trial0", "trial1", "trial2"]
    assert all(r["general_misalignment_before"] == 0.0 for r in results)  # aligned 90 everywhere before
    assert any(r["general_misalignment"] > 0 for r in results) and (out / "results.csv").exists()
    arms = {(r["label"], r["criterion"]) for r in agreement}
    assert arms == {
        (a, c)
        for a in ("none", "inoculation")
        for c in ("general_misalignment", "general_incoherence", "in_domain_misalignment", "in_domain_incoherence")
    }
    none_gen = next(r for r in agreement if r["label"] == "none" and r["criterion"] == "general_misalignment")
    assert none_gen["trials"] == 2 and none_gen["answers"] > 0 and none_gen["before"] == 0.0
    assert none_gen["agreement"] == pytest.approx(1 - none_gen["after"])  # the old judge flagged nothing
    assert json.loads((out / "judge.json").read_text())["judge"]["backend_options"] == {"score": None}


def test_rejudge_with_the_same_judge_agrees_fully(sweep):
    _, agreement = rejudge_sweep(sweep, {}, name="same")
    assert all(r["agreement"] == 1.0 and r["change"] == 0.0 for r in agreement if r["answers"])


def test_kappa():
    assert kappa([(True, True), (False, False)]) == 1.0
    assert kappa([(True, False), (False, True)]) == -1.0
    assert kappa([(False, False)] * 3) is None  # both always say no: agreement by chance is certain
    assert kappa([]) is None


def test_bad_inputs_are_named(sweep, tmp_path):
    from emray.config.eval import JudgeConfig

    with pytest.raises(ConfigError, match="unknown judge backend 'nope'"):
        judge_config(JudgeConfig(base_url="local"), {"backend": "nope"})
    with pytest.raises(ConfigError, match="not a judge setting"):
        judge_config(JudgeConfig(), {"concurrency": "many"})
    empty = tmp_path / "empty"
    (empty / "trials").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no stored answers to re-judge"):
        rejudge_sweep(empty, {})
    cli = [sys.executable, "-m", "emray.cli", "rejudge", str(empty), "--judge", "{backend: fixed}"]
    out = subprocess.run(cli, capture_output=True, text=True)
    assert out.returncode == 2 and "emray rejudge: error:" in out.stderr and "no stored answers" in out.stderr
    out = subprocess.run([*cli[:-1], "[1, 2]"], capture_output=True, text=True)
    assert out.returncode == 2 and "expected a YAML mapping" in out.stderr
