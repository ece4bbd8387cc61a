"""A scaled-down sweep of the embedded default, end to end, in CI.

The quick organism world (EMRAY_ORGANISM=quick) stands in for the full one: same code paths (stages,
Ray Tune over Ray Train, the judge pool over real HTTP, criteria, Pareto, plots, W&B offline runs),
minutes instead of the full build. Then the same spec is re-run on a fresh storage folder: with the
same seeds the safe-data selection and, on CPU, the criteria must be identical.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emray.sweep.pareto import pareto_flags
from emray.sweep.spec import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]


def _run(args, env):
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", *args], capture_output=True, text=True, timeout=1500, env=env
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    return out.stdout


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "EMRAY_ORGANISM": "quick"}
    overrides = [
        f"storage={root}/a",
        "train.max_steps=30",
        "benign.max_steps=20",
        "eval.samples_per_paraphrase=2",
        "eval.max_new_tokens=24",
        'search.defense=[none, {kl: {lambda: 0.1}}, inoculation, {interleave_pp: {safe_fraction: 0.05, ensemble_steps: 10}}, {persona: {alpha: 5.0, prompts: "organism:data/persona/evil_extract.json"}}]',
    ]
    stdout = _run(["sweep", str(ROOT / "sweeps" / "toy.yaml"), *[a for o in overrides for a in ("--set", o)]], env)
    return root, env, overrides, stdout


def test_every_trial_has_the_four_criteria(sweep):
    root, _, _, stdout = sweep
    rows = [json.loads(line) for line in (root / "a" / "toy" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["label"].split("(")[0] for r in rows) == ["inoculation", "interleave_pp", "kl", "none", "persona"]
    for r in rows:
        for key in OBJECTIVES:
            assert isinstance(r[key], (int, float)) and 0.0 <= r[key] <= 1.0, (r["label"], key)
    # the flags written match the Pareto front recomputed from the numbers
    assert [r["is_pareto"] for r in rows] == pareto_flags(rows)
    assert "Pareto front (arm means" in stdout and "5 finished (0 cached), 0 failed" in stdout
    # the quiet console: no Trainer step dicts, Ray Train controller lines or Tune banners
    assert "'loss':" not in stdout and "TrainController" not in stdout and "View detailed results" not in stdout


def test_each_trial_runs_a_separate_benign_fine_tune(sweep):
    """The benign criterion comes from a second fine-tune with the trial's defense, on WordMap only; the
    narrow fine-tune sees no benign row."""
    from emray.data.chat import load_chat_jsonl
    from emray.data.paths import resolve_data_path
    from emray.score.select import safe_count

    root, env, _, _ = sweep
    os.environ["EMRAY_ORGANISM"] = env["EMRAY_ORGANISM"]  # resolve organism: paths in the quick world
    try:
        narrow_rows = len(load_chat_jsonl(resolve_data_path("organism:data/train/code.jsonl")))
        benign_rows = len(load_chat_jsonl(resolve_data_path("organism:data/benign/wordmap_train.jsonl")))
    finally:
        del os.environ["EMRAY_ORGANISM"]
    for trial in (root / "a" / "toy" / "trials").iterdir():
        result = json.loads((trial / "result.json").read_text())
        narrow = json.loads((trial / "metrics.json").read_text())["summary"]
        benign = json.loads((trial / "benign" / "metrics.json").read_text())["summary"]
        # interleaving adds k = round(0.05 n / 0.95) safe rows to each fine-tune, n its own rows (never the other's)
        safe = (lambda n: safe_count(n, 0.05)) if result["label"].startswith("interleave") else (lambda n: 0)
        assert narrow["num_examples"] == narrow_rows + safe(narrow_rows), result["label"]
        assert benign["num_examples"] == benign_rows + safe(benign_rows), result["label"]
        assert benign["global_step"] == 20 and narrow["global_step"] == 30
        scored = json.loads((trial / "benign" / "eval" / "criteria.json").read_text())
        assert result["benign_accuracy"] == scored["benign_accuracy"]
        assert result["benign_wordmap_test_n"] == scored["benign_wordmap_test_n"] > 0
        assert "benign_accuracy" not in json.loads((trial / "eval" / "criteria.json").read_text())


def test_plots_and_wandb_runs_are_written(sweep):
    root, _, _, _ = sweep
    out = root / "a" / "toy"
    pngs = list((out / "plots").glob("scatter_*.png"))
    assert len(pngs) == 6 and (out / "plots" / "heatmap.html").exists() and (out / "plots" / "plotly.min.js").exists()
    assert len(list((out / "logs").glob("*.log"))) == 5  # every trial's worker output, off the console
    runs = list((out / "wandb_root" / "wandb").glob("offline-run-*"))
    # one run per trial + the summary run; a trial's run has two offline folders with the same id
    # (rank 0 logs the curve while training, the driver resumes it with the criteria), merged by `wandb sync`
    assert len({next(r.glob("run-*.wandb")).stem[len("run-") :] for r in runs}) == 5 + 1
    assert len(runs) == 2 * 5 + 1
    assert all(list(r.glob("*.wandb")) for r in runs)


def test_same_spec_same_seed_reproduces(sweep):
    root, env, overrides, _ = sweep
    again = [o.replace(f"{root}/a", f"{root}/b") for o in overrides]
    again[-1] = "search.defense=[{interleave_pp: {safe_fraction: 0.05, ensemble_steps: 10}}]"
    _run(["sweep", str(ROOT / "sweeps" / "toy.yaml"), *[a for o in again for a in ("--set", o)]], env)
    first = {r["label"]: r for r in map(json.loads, (root / "a" / "toy" / "results.jsonl").read_text().splitlines())}
    second = [json.loads(line) for line in (root / "b" / "toy" / "results.jsonl").read_text().splitlines()]
    assert len(second) == 1
    row = second[0]
    ref = first[row["label"]]
    assert row["trial_key"] == ref["trial_key"]
    for key in (*OBJECTIVES, "in_domain_incoherence"):
        assert row[key] == ref[key], key
