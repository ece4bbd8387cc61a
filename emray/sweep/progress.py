"""The sweep's console: one live table of trials (rich) on a terminal, plain lines elsewhere (CI logs).

Columns: arm (short label), seed, state, training step / total (from the trial's ``progress.json``,
written by rank 0, emray/train/progress.py), elapsed, and the four criteria once the trial reports them.
Everything else the trials print is in ``SWEEP_DIR/logs/<key>.log``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ray.tune import Callback

from emray.sweep.labels import short_label
from emray.sweep.spec import OBJECTIVES
from emray.train.progress import read_progress

SHORT = {"general_misalignment": "gen EM↓", "in_domain_misalignment": "in-dom↑", "benign_accuracy": "benign↑",
         "general_incoherence": "incoh↓", "reward_heldout": "task reward↑"}


def _criteria(result: dict) -> str:
    keys = (*OBJECTIVES, "reward_heldout")  # an RL trial's held-out task reward beside the four criteria
    return " ".join(f"{SHORT[k]} {result[k]:.3f}" for k in keys if isinstance(result.get(k), (int, float)))


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


class ProgressCallback(Callback):
    """Tune callback: keeps a row per trial and shows it (live table on a TTY, a line per event else)."""

    def __init__(self, trials: list | None = None, sweep_dir: str | Path | None = None, live: bool | None = None):
        self.started = time.time()
        self.sweep_dir = Path(sweep_dir) if sweep_dir else None
        self.by_key = {t.key: t for t in trials or []}
        self.by_index = {t.index: t for t in trials or []}
        self.rows: dict[str, dict] = {}  # Tune trial id -> row
        self.is_live = sys.stdout.isatty() if live is None else live
        self._live = None
        self._last_refresh = 0.0

    # ------------------------------------------------------------------------------ bookkeeping
    def _trial(self, trial):
        config = trial.config or {}
        if "trial_key" in config:
            return self.by_key.get(config["trial_key"])
        return self.by_index.get(config.get("trial_index"))

    def _row(self, trial) -> dict:
        if trial.trial_id not in self.rows:
            t = self._trial(trial)
            self.rows[trial.trial_id] = {
                "arm": short_label(t.label) if t else str(trial.trial_id), "seed": t.run.seed if t else "",
                "key": t.key if t else None, "state": "pending", "started": None, "ended": None,
                "total": t.run.train.max_steps if t else None, "step": None, "result": {},
            }
        return self.rows[trial.trial_id]

    def _say(self, row: dict, text: str) -> None:
        if self.is_live:
            self._refresh(force=True)
            return
        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"[emray {_elapsed(time.time() - self.started):>6}] {row['arm']} seed {row['seed']}: {text}  ({summary})", flush=True)

    # ------------------------------------------------------------------------------ Tune events
    def setup(self, **info):
        if self.is_live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.table(), console=Console(), refresh_per_second=2, transient=False)
            self._live.start()

    def on_trial_start(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row.update(state="running", started=time.time())
        self._say(row, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row["result"] = result
        if not self.by_key and result.get("label"):  # Optuna: the arm is known once it reports
            row["arm"], row["seed"] = short_label(result["label"]), result.get("seed", "")
        self._say(row, _criteria(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row.update(state="done", ended=time.time())
        self._say(row, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row.update(state="FAILED", ended=time.time())
        self._say(row, f"FAILED; log: {self.log_path(row) or trial.local_path or trial.path}")

    def on_step_end(self, iteration, trials, **info):
        if self.is_live:
            self._refresh()

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._refresh(force=True)
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------------------ rendering
    def log_path(self, row: dict) -> Path | None:
        return self.sweep_dir / "logs" / f"{row['key']}.log" if self.sweep_dir and row.get("key") else None

    def _step(self, row: dict) -> str:
        if row["state"] == "running" and self.sweep_dir and row["key"]:
            progress = read_progress(self.sweep_dir / "trials" / row["key"])
            if progress:
                row["step"], row["total"] = progress.get("step"), progress.get("total") or row["total"]
                row["phase"] = progress.get("phase")  # "benign": the trial's second fine-tune
                if progress.get("done"):
                    return f"{row['phase']} eval" if row["phase"] else "eval"
        if row["state"] == "done":
            return "✓"
        if row["step"] is None:
            return f"-/{row['total']}" if row["total"] else "-"
        return (f"{row['phase']} " if row.get("phase") else "") + f"{row['step']}/{row['total']}"

    def table(self):
        from rich.table import Table

        table = Table(title=f"emray sweep · {_elapsed(time.time() - self.started)}", title_justify="left", expand=False)
        for name, justify in (("arm", "left"), ("seed", "right"), ("state", "left"), ("step", "right"), ("elapsed", "right"),
                              *((SHORT[k], "right") for k in OBJECTIVES)):
            table.add_column(name, justify=justify, no_wrap=True)
        style = {"running": "cyan", "done": "green", "FAILED": "bold red", "pending": "dim"}
        for row in self.rows.values():
            began = row["started"] or time.time()
            elapsed = _elapsed((row["ended"] or time.time()) - began) if row["started"] else ""
            result = row["result"]
            values = [f"{result[k]:.3f}" if isinstance(result.get(k), (int, float)) else "" for k in OBJECTIVES]
            table.add_row(row["arm"], str(row["seed"]), f"[{style.get(row['state'], '')}]{row['state']}[/]", self._step(row),
                          elapsed, *values)
        return table

    def _refresh(self, force: bool = False) -> None:
        now = time.time()
        if self._live is None or (not force and now - self._last_refresh < 0.5):
            return
        self._last_refresh = now
        self._live.update(self.table())


def final_summary(sweep_dir: Path, rows: list[dict]) -> str:
    """What the console ends with: the recommendation (emray/sweep/recommend.py), the per-arm table with
    intervals and the front, and where things are."""
    from emray.sweep.pareto import arm_rows, format_arm_table, interval_note
    from emray.sweep.recommend import closing_lines

    arms = arm_rows(rows)
    front = [a["short_label"] for a in arms if a["is_pareto"]]
    return "\n".join([
        *closing_lines(sweep_dir, rows),
        "",
        format_arm_table(arms),
        f"({interval_note(arms)})",
        f"Pareto front (arm means, {len(front)} of {len(arms)}): {', '.join(front)}",
        f"results  {sweep_dir}/results.jsonl (per trial), {sweep_dir}/arms.jsonl (per arm)",
        f"plots    {sweep_dir}/plots/",
        f"report   emray report {sweep_dir}   -> {sweep_dir}/report.html",
        f"logs     {sweep_dir}/logs/<trial key>.log (emray sweep --verbose streams them)",
        f"W&B      {sweep_dir}/wandb_root/wandb/",
    ])
