"""A sweep never lies: a failed trial is listed with its error file, never becomes a row, and the
exit code says so; a judge outage mid-sweep costs only what it touched, and ``--resume`` (after an
edit of the spec) runs exactly the trials without a result."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA

BASE = f"""\
base:
  model: {{name: tiny}}
  lora: {{r: 4, alpha: 8}}
  data: {{fine: {SHARED_DATA}/train/medical.jsonl, max_examples: 8}}
  train: {{lr: 1.0e-3, max_steps: 3, batch_size: 4, max_len: 256, progress: false}}
  eval:
    general: {SHARED_DATA}/questions/general.yaml
    samples_per_paraphrase: 1
    max_questions: 2
    max_new_tokens: 4
    judge: {{base_url: local, backend: rules}}
wandb: {{enabled: false}}
"""


def write_spec(
    path: Path,
    storage: Path,
    defenses: str,
    resources: str = "{max_concurrent_trials: 1}",
    judge: str | None = None,
    seeds: str = "[0]",
) -> Path:
    text = (
        f"name: s\nstorage: {storage}\n{BASE}search: {{defense: {defenses}, seeds: {seeds}}}\nresources: {resources}\n"
    )
    if judge:
        text = text.replace("judge: {base_url: local, backend: rules}", f"judge: {judge}")
    path.write_text(text)
    return path


def sweep(spec: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "emray.cli", "sweep", str(spec), *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "s" / "results.jsonl").read_text().splitlines()]


def test_dry_run_names_the_missing_file_and_the_trial(tmp_path):
    missing = tmp_path / "no_pool.jsonl"
    spec = write_spec(tmp_path / "s.yaml", tmp_path / "out", f"[none, {{interleave_plus: {{pool: {missing}}}}}]")
    out = sweep(spec, "--dry-run")
    assert out.returncode == 2, out.stdout + out.stderr
    line = next(line for line in out.stderr.splitlines() if str(missing) in line)
    assert "no such file (defenses.interleave_plus)" in line and "trial interleave_plus(" in line and "key " in line
    assert "none" not in line  # only the trial that reads it
    # a real run refuses before starting Ray, with the same message
    run = sweep(spec)
    assert run.returncode == 2 and str(missing) in run.stderr and not (tmp_path / "out" / "s" / "trials").exists()


def test_diverged_trial_fails_loudly_and_the_rest_is_kept(tmp_path):
    """λ = 1e300 overflows float32: the loss is NaN from step 1 (in the Ray Train worker)."""
    spec = write_spec(tmp_path / "s.yaml", tmp_path / "out", "[none, {ldifs: {lambda: 1.0e300}}]")
    out = sweep(spec)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[emray] 1 finished (0 cached), 1 failed" in out.stdout
    failures = out.stdout.split("failed trials (not in the results table):")[1].splitlines()
    assert "ldifs(lambda=1.0e300)" in failures[1] and "training diverged" in failures[1]
    error_file = Path(failures[2].strip())
    assert error_file.name == "error.txt" and error_file.read_text().startswith("TrialFailed: training diverged")
    assert [r["label"] for r in rows(tmp_path / "out")] == ["none"]  # the finished trial, and only it


# slow (2.5 min): the default run keeps judge failures in tests/test_judge_client.py and a sweep's resume in
# tests/test_sweep_resume.py; this joins them in one sweep
@pytest.mark.slow
def test_judge_outage_then_resume_after_editing_the_spec(tmp_path):
    outage = tmp_path / "judge_down"
    judge = (
        f"{{base_url: local, backend: flaky, backend_options: {{inner: rules, failure_rate: 0.0, outage_file: {outage}}}, "
        f"max_retries: 1, backoff_base_s: 0, cache_path: {tmp_path}/judge.sqlite}}"
    )
    # Two seeds: different samples, so the second trial's judgments are not the first one's cache hits.
    spec = write_spec(
        tmp_path / "s.yaml",
        tmp_path / "out",
        "[none]",
        resources="{max_concurrent_trials: 1, max_failures: 0}",
        judge=judge,
        seeds="[0, 1]",
    )
    trials = tmp_path / "out" / "s" / "trials"
    proc = sweep(spec, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and not list(trials.glob("*/result.json")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.3)
    outage.touch()  # the judge goes down after the first trial finished
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, stdout[-3000:]
    assert "1 finished (0 cached), 1 failed" in stdout
    [done] = [p.parent for p in trials.glob("*/result.json")]
    [failed] = [p.parent for p in trials.glob("*/error.txt")]
    assert "judgments failed (100% > max_failure_rate 5%)" in (failed / "error.txt").read_text().splitlines()[0]
    assert (failed / "adapter" / "adapter_model.safetensors").exists()  # its training is kept
    assert (failed / "eval" / "answers.jsonl").exists()  # and its answers
    import sqlite3

    def judgments():
        with sqlite3.connect(tmp_path / "judge.sqlite") as db:
            return db.execute("select count(*) from judgments").fetchone()[0]

    cached_judgments = judgments()
    assert cached_judgments > 0  # the first trial's judgments survive the outage
    kept = {
        p: p.stat().st_mtime_ns
        for p in (
            done / "result.json",
            failed / "adapter" / "adapter_model.safetensors",
            failed / "eval" / "answers.key",
        )
    }  # written when answers are generated

    outage.unlink()  # the judge recovers
    # Edit the spec before resuming: a new seed listed first (every trial's position moves; trials are
    # addressed by key), and judge settings that do not change results.
    write_spec(
        tmp_path / "s.yaml",
        tmp_path / "out",
        "[none]",
        seeds="[2, 0, 1]",
        resources="{max_concurrent_trials: 1, max_failures: 0}",
        judge=judge.replace("max_retries: 1", "max_retries: 2, concurrency: 4"),
    )
    out = sweep(spec, "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 finished (1 cached), 0 failed" in out.stdout
    for path, mtime in kept.items():  # nothing finished was recomputed: no retraining, no regeneration
        assert path.stat().st_mtime_ns == mtime, path
    assert not (failed / "error.txt").exists() and (failed / "result.json").exists()
    assert sorted(r["seed"] for r in rows(tmp_path / "out")) == [0, 1, 2]
    assert len(list(trials.iterdir())) == 3
    assert judgments() > cached_judgments
