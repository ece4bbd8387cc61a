"""A live view of a sweep: one line per trial event, with the criteria as they arrive."""

from __future__ import annotations

import time

from ray.tune import Callback

from emray.sweep.spec import OBJECTIVES

SHORT = {"general_misalignment": "gen_mis", "in_domain_misalignment": "dom_mis", "benign_accuracy": "benign", "general_incoherence": "incoh"}


def _criteria(result: dict) -> str:
    parts = [f"{SHORT[k]}={result[k]:.3f}" for k in OBJECTIVES if isinstance(result.get(k), (int, float))]
    return " ".join(parts)


class ProgressCallback(Callback):
    def __init__(self):
        self.started = time.time()
        self.done = 0

    def _line(self, trials, trial, text: str) -> None:
        states = {}
        for t in trials:
            states[t.status] = states.get(t.status, 0) + 1
        summary = " ".join(f"{k.lower()}={v}" for k, v in sorted(states.items()))
        label = trial.config.get("trial_index", trial.trial_id)
        print(f"[emray {time.time() - self.started:6.0f}s] trial {label}: {text}  ({summary})", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trials, trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._line(trials, trial, f"{result.get('label', '')} {_criteria(result)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        self._line(trials, trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, f"FAILED (see {trial.local_path or trial.path})")
