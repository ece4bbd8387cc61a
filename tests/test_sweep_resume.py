"""kill -9 of the sweep driver mid-sweep, then --resume: finished trials are not retrained."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import SHARED_DATA

SPEC = f"""\
name: resume
storage: {{storage}}
base:
  model: {{{{name: tiny}}}}
  lora: {{{{r: 4, alpha: 8}}}}
  data: {{{{fine: {SHARED_DATA}/train/medical.jsonl, max_examples: 8}}}}
  train: {{{{lr: 1.0e-3, max_steps: 3, batch_size: 4, max_len: 256, progress: false}}}}
  eval:
    general: {SHARED_DATA}/questions/general.yaml
    samples_per_paraphrase: 1
    max_questions: 2
    max_new_tokens: 4
    judge: {{{{base_url: local, backend: rules}}}}
search:
  defense: [none, inoculation, {{{{inoculation: {{{{prompt: be bad}}}}}}}}]
  seeds: [0]
resources: {{{{max_concurrent_trials: 1}}}}
wandb: {{{{enabled: false}}}}
"""


def _sweep(spec: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "emray.cli", "sweep", str(spec), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_kill_driver_then_resume(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(storage=tmp_path / "out"))
    trials = tmp_path / "out" / "resume" / "trials"
    proc = _sweep(spec)
    deadline = time.time() + 400
    while time.time() < deadline and not list(trials.glob("*/result.json")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(1)
    finished = list(trials.glob("*/result.json"))
    assert finished, "no trial finished before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray cluster die at once
    proc.wait()
    assert len(list(trials.glob("*/result.json"))) < 3
    done_before = {
        p.parent.name: (p.parent / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns for p in finished
    }

    resumed = _sweep(spec, "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    results = sorted(trials.glob("*/result.json"))
    assert len(results) == 3
    for key, mtime in done_before.items():  # finished trials were not retrained
        assert (trials / key / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    rows = [json.loads(line) for line in (tmp_path / "out" / "resume" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("general_misalignment" in r for r in rows)
