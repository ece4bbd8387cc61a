"""A stage that fails costs only the trials that need it.

A stage (the persona vector, a safe selection, the RL warm start) runs once before the trials, for every
trial that declares it. When it raises, the sweep writes its reason and traceback to
``SWEEP_DIR/stages/<stage>-<key>.error.txt``, marks the artifacts of the trials that needed it, and goes
on: those trials are recorded failed with the stage's reason (their ``error.txt``, the console, the exit
code), the others run. Before, the first failed stage ended the whole sweep before any trial, including
arms that never read its output (docs/cluster.md "Rehearsal").
"""

from __future__ import annotations

import traceback
from pathlib import Path

#: the key a failed stage leaves in the artifacts of every trial that needed it: the one-line reason
STAGE_FAILED = "stage_failed"


class StageFailed(RuntimeError):
    """A trial cannot run: a stage it needs failed (the message names the stage, its reason and its log)."""


def record_stage_failure(sweep_dir: Path, stage: str, key: str, err: BaseException, reason: str) -> str:
    """Write the stage's error file; returns the line each dependent trial's failure carries."""
    log = sweep_dir / "stages" / f"{stage}-{key[:16]}.error.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(reason + "\n\n" + "".join(traceback.format_exception(err)))
    return f"stage {stage} failed: {reason} (log: {log})"


def stage_failure(artifacts: dict) -> str | None:
    """The reason a trial cannot run, from its artifacts, or None."""
    return artifacts.get(STAGE_FAILED)


def describe_stage_failure(line: str, needing: list[str], others: int) -> str:
    """The console's account of a failed stage: what failed, where the log is, which trials it costs."""
    return (
        f"[emray] {line}\n[emray]   {len(needing)} trial(s) need it and are recorded failed "
        f"({', '.join(needing[:6])}{' ...' if len(needing) > 6 else ''}); {others} other trial(s) run"
    )
