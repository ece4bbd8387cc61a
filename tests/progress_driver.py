"""Drives the sweep console (emray/sweep/progress.py) with synthetic trials and progress files, no
Ray: what tests/test_progress_console.py runs behind a pipe and in a real terminal (tmux).

    python tests/progress_driver.py SWEEP_DIR N_TRIALS HOLD_SECONDS [--until-stop]

Trial 0 finished in an earlier run (its result.json exists); trials 1-4 run: narrow 40/150 (loss
1.234), benign 12/300, the narrow evaluation, and one without a progress file yet; trial 5 failed.
The console then runs HOLD_SECONDS with nothing changing, trial 1 finishes, and (``--until-stop``) it
keeps refreshing until SWEEP_DIR/stop exists, having written SWEEP_DIR/ready.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from emray.sweep.progress import ProgressCallback

LABELS = [
    "none",
    "kl(lambda=0.1)",
    "persona(alpha=5,prompts=organism:data/persona/evil_extract.json)",
    "interleave(safe_fraction=0.05)",
    "inoculation",
    "ldifs(lambda=1.0)",
]
RESULT = {
    "general_misalignment": 0.5,
    "in_domain_misalignment": 0.9,
    "benign_accuracy": 0.1,
    "general_incoherence": 0.15,
}


def trials(n: int) -> list:
    out = []
    for i in range(n):
        run = SimpleNamespace(seed=i // len(LABELS), train=SimpleNamespace(max_steps=150))
        out.append(SimpleNamespace(key=f"key{i:03d}", label=LABELS[i % len(LABELS)], run=run, index=i))
    return out


def progress(sweep: Path, key: str, **data) -> None:
    folder = sweep / "trials" / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "progress.json").write_text(json.dumps({"time": time.time(), **data}))


def hold(cb: ProgressCallback, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        cb.on_step_end(0, [])
        time.sleep(0.05)


def main(sweep: Path, n: int, seconds: float, until_stop: bool) -> None:
    planned = trials(n)
    (sweep / "trials" / planned[0].key).mkdir(parents=True, exist_ok=True)
    (sweep / "trials" / planned[0].key / "result.json").write_text(json.dumps({**RESULT, "label": planned[0].label}))
    cb = ProgressCallback(planned, sweep)
    cb.setup()
    tune = [
        SimpleNamespace(trial_id=f"t{i}", config={"trial_key": t.key}, local_path=None, path=None)
        for i, t in enumerate(planned)
    ]
    for i in range(6):
        cb.on_trial_start(0, tune, tune[i])
    cb.on_trial_result(0, tune, tune[0], {**RESULT, "label": planned[0].label})
    cb.on_trial_complete(0, tune, tune[0])
    progress(sweep, planned[1].key, step=40, total=150, phase=None, loss=1.234)
    progress(sweep, planned[2].key, step=12, total=300, phase="benign", loss=0.5)
    progress(sweep, planned[3].key, step=150, total=150, phase=None, loss=0.25, done=True)
    cb.on_trial_error(0, tune, tune[5])
    hold(cb, seconds)
    cb.on_trial_result(0, tune, tune[1], RESULT)
    cb.on_trial_complete(0, tune, tune[1])
    hold(cb, 0.3)
    if until_stop:
        (sweep / "ready").write_text("")
        deadline = time.time() + 60
        while not (sweep / "stop").exists() and time.time() < deadline:
            hold(cb, 0.2)
    cb.on_experiment_end([])
    print("DRIVER DONE", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), "--until-stop" in sys.argv)
