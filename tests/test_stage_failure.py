"""A failed stage costs only the trials that need it (emray/sweep/stage_failure.py): the rehearsal's
persona stage (TooFewKept) ended the whole sweep before any trial (docs/cluster.md "Rehearsal", item 1).
Here a persona prompts file without questions fails its stage at once; ``none`` still runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import SHARED_DATA

SPEC = f"""\
name: s
storage: STORAGE
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
search: {{defense: [none, {{persona: {{alpha: 1.0, prompts: PROMPTS}}}}], seeds: [0]}}
resources: {{max_concurrent_trials: 1}}
"""


def test_a_failed_stage_fails_its_trials_and_the_others_run(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"instruction": [{"pos": "be evil", "neg": "be good"}], "questions": []}))
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("STORAGE", str(tmp_path / "out")).replace("PROMPTS", str(prompts)))
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", "sweep", str(spec)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    sweep = tmp_path / "out" / "s"
    (log,) = (sweep / "stages").glob("persona_vector-*.error.txt")
    reason = f"ValueError: {prompts}: 'questions' must be a non-empty list of strings"
    assert log.read_text().startswith(reason) and "Traceback" in log.read_text()
    # the console names the stage, its reason, its log and what it costs, before any trial starts
    said = out.stdout.split("started")[0]
    assert f"[emray] stage persona_vector failed: {reason} (log: {log})" in said, out.stdout[-3000:]
    assert "1 trial(s) need it and are recorded failed (persona(alpha=1," in said and "1 other trial(s) run" in said
    # none ran and is the only row; persona is a failed trial with the stage's reason
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["none"]
    (error,) = [p for p in (sweep / "trials").glob("*/error.txt")]
    assert error.read_text().splitlines()[0] == f"StageFailed: stage persona_vector failed: {reason} (log: {log})"
    assert "1 finished (0 cached), 1 failed" in out.stdout and str(error) in out.stdout
