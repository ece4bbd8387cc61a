"""A trial's training curves, read back from its fine-tunes' ``metrics.json`` (rank 0 writes the
Trainer's log history there when a fine-tune ends): the narrow fine-tune's in ``trials/<key>/``, the
benign fine-tune's in ``trials/<key>/benign/``. One reader for everyone who draws or logs them: the
report's "Training" figure (emray/sweep/plots.py) and the W&B trial runs (emray/sweep/wandb_log.py).
"""

from __future__ import annotations

import json
from pathlib import Path

#: (phase, the fine-tune's folder inside the trial's): what the report and W&B call each curve
PHASES = (("narrow", "."), ("benign", "benign"))


def fine_tune_history(metrics_file: Path) -> list[dict]:
    """The training log entries (those with a loss) of one fine-tune's ``metrics.json``; [] without one."""
    try:
        entries = json.loads(Path(metrics_file).read_text()).get("history", [])
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("loss"), (int, float))]


def loss_curve(metrics_file: Path) -> list[tuple[int, float]]:
    """(step, loss) of one fine-tune, in step order."""
    return sorted((int(e.get("step", i)), float(e["loss"])) for i, e in enumerate(fine_tune_history(metrics_file)))


def trial_curves(trial_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{"narrow": [(step, loss)], "benign": [...]}`` of one trial; a phase it did not run is left out."""
    out = {}
    for phase, folder in PHASES:
        curve = loss_curve(Path(trial_dir) / folder / "metrics.json")
        if curve:
            out[phase] = curve
    return out
