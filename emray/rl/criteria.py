"""The RL criteria a trial reports beside the four evaluation criteria: the task reward learned.

``reward_gain``: mean training reward over the last 10 % of steps minus the first 10 % (the reference
judged task learning by the training-reward curve; "fails to learn" is a flat curve, gain near 0);
``reward_heldout``: mean reward on the held-out prompts after training; both written by the training
run into metrics.json (emray/train/grpo.py).
"""

from __future__ import annotations

import json
from pathlib import Path

KEYS = ("reward_first", "reward_last", "reward_gain", "reward_heldout", "reward_parse_failures")


def rl_record(trial_dir: Path) -> dict:
    """The RL criteria of a finished training run (empty for an SFT run)."""
    path = Path(trial_dir) / "metrics.json"
    if not path.exists():
        return {}
    summary = json.loads(path.read_text()).get("summary", {})
    return {k: summary[k] for k in KEYS if isinstance(summary.get(k), (int, float))}
