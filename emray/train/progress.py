"""What a sweep trial's worker processes tell the driver and the person watching, while they run.

- ``trial_output``: a trial's training workers and its evaluation task write their stdout/stderr
  (HF Trainer, Ray Train worker, torch, library warnings) to ``SWEEP_DIR/logs/<trial key>.log``
  instead of the console. ``EMRAY_VERBOSE=1`` (``emray sweep --verbose``) leaves them streaming.
- ``TrialProgress``: a TrainerCallback on rank 0 (``live_callbacks``) that writes ``trials/<key>/progress.json``
  (step, total, loss) at every logging step, which the driver's live table reads; and, when the
  sweep logs to W&B, the training curves into the trial's W&B run as they happen.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

PROGRESS_FILE = "progress.json"


def verbose() -> bool:
    return os.environ.get("EMRAY_VERBOSE", "") not in {"", "0"}


def trial_phase(run_dir: Path) -> tuple[Path, str | None]:
    """(the trial's folder, phase) for a fine-tune's folder: a trial's narrow fine-tune writes into
    ``trials/<key>`` itself (phase None), its benign fine-tune into ``trials/<key>/benign``."""
    run_dir = Path(run_dir)
    if run_dir.parent.parent.name == "trials":
        return run_dir.parent, run_dir.name
    return run_dir, None


def sweep_log_path(trial_dir: Path) -> Path | None:
    """``SWEEP_DIR/logs/<key>.log`` for a sweep trial's folder (``SWEEP_DIR/trials/<key>``, or a
    fine-tune inside it), else None."""
    trial_dir, _ = trial_phase(trial_dir)
    if trial_dir.parent.name != "trials":
        return None  # a plain ``emray train`` run: its output stays on the console
    return trial_dir.parent.parent / "logs" / f"{trial_dir.name}.log"


@contextlib.contextmanager
def trial_output(trial_dir: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C-level and child output
    too) to the trial's log file for the duration; restored after, because Ray reuses worker
    processes for other trials' tasks."""
    path = sweep_log_path(trial_dir)
    if path is None or verbose():
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        print(f"==== {time.strftime('%H:%M:%S')} pid {os.getpid()} ====", flush=True)
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def read_progress(trial_dir: Path) -> dict | None:
    try:
        return json.loads((Path(trial_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class TrialProgress(_trainer_callback_base()):  # type: ignore[misc]  # transformers imported on first use
    """Rank 0's live report: ``progress.json`` and, optionally, the W&B run's training curves."""

    def __init__(self, trial_dir: Path, wandb_run=None, phase: str | None = None):
        self.trial_dir = Path(trial_dir)
        self.wandb_run = wandb_run
        self.phase = phase  # None: the narrow fine-tune; "benign": the trial's benign fine-tune
        self._last = 0.0
        self._loss = None  # the last logged training loss, kept in every write (the live table's loss column)

    def _write(self, state, **extra) -> None:
        data = {
            "step": state.global_step,
            "total": state.max_steps,
            "time": time.time(),
            "wandb_live": self.wandb_run is not None,
            "phase": self.phase,
            "loss": self._loss,
            **extra,
        }
        tmp = self.trial_dir / (PROGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.trial_dir / PROGRESS_FILE)
        self._last = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self._write(state)

    def on_step_end(self, args, state, control, **kwargs):
        # Logging steps can be far apart (logging_steps); the step counter is cheap to write every second.
        if time.time() - self._last >= 1.0:
            self._write(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        if "loss" in numbers:
            self._loss = numbers["loss"]
        self._write(state)
        if self.wandb_run is not None and numbers:
            self.wandb_run.log({f"train/{k}": v for k, v in numbers.items()}, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state, done=True)
        if self.wandb_run is not None:
            # The driver must not log the curve again; progress.json cannot say so (the benign fine-tune rewrites it).
            (self.trial_dir / CURVE_FILE).write_text(
                json.dumps({"run_id": self.wandb_run.id, "last_step": state.global_step})
            )
            self.wandb_run.finish()  # the driver resumes this run with the criteria after evaluation


LIVE_RUN_FILE = "wandb_run.json"
#: Written by rank 0 when its live W&B run has the training curve: ``{"run_id", "last_step"}``.
CURVE_FILE = "wandb_curve.json"


def curve_logged_live(trial_dir: Path) -> bool:
    """Whether rank 0 logged the trial's training curve into its W&B run as it trained."""
    trial_dir = Path(trial_dir)
    return (trial_dir / CURVE_FILE).exists() or bool((read_progress(trial_dir) or {}).get("wandb_live"))


def init_run(init_args: dict):
    """``wandb.init`` with emray's quiet settings; the one place a trial's W&B run is opened."""
    import wandb

    Path(init_args["dir"]).mkdir(parents=True, exist_ok=True)
    return wandb.init(**init_args, reinit="create_new", settings=wandb.Settings(silent=True, console="off"))


def open_live_run(trial_dir: Path):
    """Rank 0 of a sweep trial: the trial's W&B run, opened before training so the loss curve is
    logged while it trains (``TrialProgress``), from the arguments the driver wrote beside the trial
    (emray.sweep.wandb_log.live_run_init). None outside a sweep or with W&B off."""
    path = Path(trial_dir) / LIVE_RUN_FILE
    return init_run(json.loads(path.read_text())) if path.exists() else None


def live_callbacks(trial_dir: Path, rank: int) -> list:
    """Rank 0's callbacks for a sweep trial: progress.json, and the W&B run when the sweep logs to W&B."""
    if rank != 0:
        return []
    trial_dir, phase = trial_phase(trial_dir)
    if phase is not None:  # the benign fine-tune: the live table shows it; its curve stays in benign/metrics.json
        return [TrialProgress(trial_dir, phase=phase)]
    return [TrialProgress(trial_dir, wandb_run=open_live_run(trial_dir))]
