"""The sweep's console: one live table of trials (rich) on a terminal, plain status lines elsewhere
(``ray job submit``, a pipe, CI logs).

Every planned trial has a row from the start (pending until Tune starts it; a trial finished by an
earlier run shows as done). A running trial's phase (``narrow`` / ``benign`` fine-tune, then its
evaluation), step / total and last loss come from its ``progress.json``, written by rank 0
(emray/train/progress.py). The ETA (``eta``) is ``?`` until a trial of this run finishes; then the work
left (pending trials, the rest of the running ones) at the mean duration of this run's finished trials,
over the trials seen running at once, re-estimated when a trial starts, finishes or fails, smoothed, and
counting down in between. The clock starts at the sweep's start (``started``: before its stages), not
Tune's. Under ``search.algorithm: dose_search`` the trials are not all planned up front (``needed``): a
trial has a row once the search asks for it, and the pending count is what it asks for now.

- On a TTY: the table, titled with the counts and the ETA; with more trials than terminal lines,
  running and failed rows stay and the rest of the finished / pending ones fold into a count row.
- Off a TTY: a line per event (started, its criteria, finished, failed), and a status line (counts,
  ETA, each running trial's phase and step) whenever a running trial changes phase and at least every
  ``EMRAY_PROGRESS_INTERVAL`` seconds (30 by default).
Everything else the trials print is in ``SWEEP_DIR/logs/<key>.log``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ray.tune import Callback

from emray.sweep.labels import short_label
from emray.sweep.spec import OBJECTIVES
from emray.train.progress import read_progress

SHORT = {
    "general_misalignment": "gen EM↓",
    "in_domain_misalignment": "in-dom↑",
    "benign_accuracy": "benign↑",
    "general_incoherence": "incoh↓",
    "reward_heldout": "task reward↑",
}

TABLE_SHORT = {**SHORT, "general_misalignment": "genEM↓"}  # the table's narrower header

#: Seconds between two plain status lines when nothing changes; the environment variable overrides it.
INTERVAL_ENV = "EMRAY_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0
#: How far one re-estimate moves the ETA's expected end (the rest keeps the previous one): a trial that
#: finishes fast or slow nudges the estimate instead of swinging it.
ETA_SMOOTHING = 0.5
POLL_SECONDS = 1.0  # how often the plain console reads the running trials' progress files
#: The live table's lines besides its rows: title, the header and its rule, the closing blank line,
#: the counts caption and one spare for the cursor.
TABLE_LINES = 6


def progress_interval(default: float = DEFAULT_INTERVAL) -> float:
    try:
        value = float(os.environ.get(INTERVAL_ENV, default))
    except ValueError:
        return default
    return value if value > 0 else default


def _criteria(result: dict) -> str:
    if "em_probe/general_misalignment" in result:  # an early-stop probe (emray/sweep/early_stop.py)
        probe = {k: result.get(f"em_probe/{k}") for k in OBJECTIVES}
        return f"probe at step {result.get('step')}/{result.get('total_steps')}: " + _criteria(probe)
    keys = (*OBJECTIVES, "reward_heldout")  # an RL trial's held-out task reward beside the four criteria
    return " ".join(f"{SHORT[k]} {result[k]:.3f}" for k in keys if isinstance(result.get(k), (int, float)))


def duration_text(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def stamp(started: float, now: float | None = None) -> str:
    """The prefix of every console line: ``[emray   2:30]``, the time since the sweep started."""
    return f"[emray {duration_text((time.time() if now is None else now) - started):>6}]"


class ProgressCallback(Callback):
    """Tune callback: keeps a row per trial and shows it (live table on a TTY, lines else).

    ``trials``: the planned trials (grid / random), each a row from the start; ``total``: how many
    trials the sweep runs when they are not planned ahead (Optuna's ``num_samples``); ``needed``: an
    adaptive search's trial keys it needs now (dose_search): ``trials`` then only names them, and a
    trial has a row once the search asks for it; ``started``: the sweep's start (its clock's zero)."""

    def __init__(
        self,
        trials: list | None = None,
        sweep_dir: str | Path | None = None,
        live: bool | None = None,
        total: int | None = None,
        interval: float | None = None,
        clock=time.time,
        needed=None,
        started: float | None = None,
    ):
        self.clock = clock
        self.started = clock() if started is None else started
        self.sweep_dir = Path(sweep_dir) if sweep_dir else None
        self.by_key = {t.key: t for t in trials or []}
        self.by_index = {t.index: t for t in trials or []}
        self.rows: dict[str, dict] = {}  # row id (the trial key, else Tune's trial id) -> row
        self._ids: dict[str, str] = {}  # Tune trial id -> row id
        self.needed = needed
        self.planned = len(self.by_key)  # dose_search: the grid it searches, an upper bound on its trials
        for t in (trials or []) if needed is None else []:
            self.rows[t.key] = self._new_row(t, t.key)
        self.total = max(total or 0, len(self.rows))
        self._eta_end: float | None = None  # when the sweep is expected to end (``eta``)
        self.is_live = sys.stdout.isatty() if live is None else live
        self.interval = progress_interval() if interval is None else interval
        self.peak_running = 0
        self._live = None
        self._last_refresh = 0.0
        self._last_poll = float("-inf")
        self._last_status = self.started
        self._status_sig: tuple = ()

    # ------------------------------------------------------------------------------ bookkeeping
    def _new_row(self, t, fallback_id: str) -> dict:
        row = {
            "arm": short_label(t.label) if t else str(fallback_id),
            "seed": t.run.seed if t else "",
            "key": t.key if t else None,
            "state": "pending",
            "started": None,
            "ended": None,
            "total": t.run.train.max_steps if t else None,
            "step": None,
            "phase": None,
            "loss": None,
            "activity": None,
            "cached": False,
            "result": {},
        }
        if t is not None and self.sweep_dir is not None:
            from emray.sweep.pareto import read_result

            record = read_result(self.sweep_dir / "trials" / t.key / "result.json")
            if record is not None:  # finished by an earlier run: Tune only reports it again
                row.update(state="done", cached=True, result=record)
        return row

    def _trial(self, trial):
        config = trial.config or {}
        if "trial_key" in config:
            return self.by_key.get(config["trial_key"])
        return self.by_index.get(config.get("trial_index"))

    def _row(self, trial) -> dict:
        if trial.trial_id not in self._ids:
            t = self._trial(trial)
            row_id = t.key if t is not None and t.key in self.rows else str(trial.trial_id)
            if row_id not in self.rows:
                self.rows[row_id] = self._new_row(t, trial.trial_id)
                self.total = max(self.total, len(self.rows))
            self._ids[trial.trial_id] = row_id
        return self.rows[self._ids[trial.trial_id]]

    def _pending_adaptive(self) -> int:
        """dose_search: the trials the search asks for now that Tune has not started."""
        started = {r["key"] for r in self.rows.values() if r["state"] != "pending"}
        return sum(1 for key in self.needed() if key not in started)

    def counts(self) -> dict[str, int]:
        states = [r["state"] for r in self.rows.values()]
        out = {"finished": states.count("done"), "running": states.count("running"), "failed": states.count("FAILED")}
        if self.needed is not None:
            out["pending"] = self._pending_adaptive()
        else:
            out["pending"] = max(self.total - sum(out.values()), 0)
        return out

    def counts_text(self, now: float | None = None) -> str:
        c = self.counts()
        cached = sum(r["cached"] for r in self.rows.values())
        eta = self.eta(now)
        if self.needed is None:
            finished, pending = f"{c['finished']}/{self.total} finished", f"{c['pending']} pending"
        else:  # the grid bounds what an adaptive search may still ask for; the ETA covers what it asked
            more = max(self.planned - sum(c.values()), 0)
            finished, pending = (
                f"{c['finished']} finished",
                f"{c['pending']} pending (dose_search: at most {more} more)",
            )
        return (
            finished
            + (f" ({cached} cached)" if cached else "")
            + f", {c['running']} running, {pending}, {c['failed']} failed"
            + f" · ETA {'?' if eta is None else ('≥' if self.needed else '') + duration_text(eta)}"
        )

    def work_left(self, now: float) -> float | None:
        """Seconds of work left, spread over the most trials seen running at once: the pending trials
        and the rest of the running ones at the mean duration of this run's finished trials; None
        before one finishes (a trial's training pace says nothing of its evaluations)."""
        rows = list(self.rows.values())
        durations = [
            r["ended"] - r["started"]
            for r in rows
            if r["state"] == "done" and not r["cached"] and r["started"] is not None
        ]
        if not durations:
            return None
        mean = sum(durations) / len(durations)
        running = [r for r in rows if r["state"] == "running" and r["started"] is not None]
        work = sum(max(mean - (now - r["started"]), 0.0) for r in running) + self.counts()["pending"] * mean
        return work / max(self.peak_running, 1)

    def estimate(self, now: float | None = None) -> None:
        """Re-estimate the expected end (on a trial's start, end or failure): the new estimate moves it
        ``ETA_SMOOTHING`` of the way, so one fast or slow trial does not swing it."""
        now = self.clock() if now is None else now
        left = self.work_left(now)
        if left is None:
            return
        target = now + left
        if self._eta_end is None:
            self._eta_end = target
        else:
            self._eta_end += ETA_SMOOTHING * (target - self._eta_end)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds of sweep left: None (``ETA ?``) until a trial of this run finishes, then the time to
        the expected end, counting down between events; once past it with work left, re-estimated."""
        now = self.clock() if now is None else now
        c = self.counts()
        if not c["running"] and not c["pending"]:
            return 0.0
        if self._eta_end is not None and self._eta_end <= now:
            self.estimate(now)  # overdue: the trials take longer than estimated
        return None if self._eta_end is None else max(self._eta_end - now, 0.0)

    # ------------------------------------------------------------------------------ Tune events
    def _say(self, row: dict, text: str) -> None:
        if self.is_live:
            self._refresh(force=True)
            return
        now = self.clock()
        print(
            f"{stamp(self.started, now)} {row['arm']} seed {row['seed']}: {text}  ({self.counts_text(now)})", flush=True
        )

    def setup(self, **info):
        if self.is_live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.table(), console=Console(), refresh_per_second=2, transient=False)
            self._live.start()

    def on_trial_start(self, iteration, trials, trial, **info):
        row = self._row(trial)
        if row["state"] == "done" and row["cached"]:
            return  # a finished trial Tune runs again only to read its result
        row.update(state="running", started=self.clock(), ended=None, step=None, phase=None, loss=None, activity=None)
        self.peak_running = max(self.peak_running, self.counts()["running"])
        self.estimate()
        self._say(row, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row["result"] = result
        if not self.by_key and result.get("label"):  # Optuna: the arm is known once it reports
            row["arm"], row["seed"] = short_label(result["label"]), result.get("seed", "")
        if not row["cached"]:
            self._say(row, _criteria(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        row = self._row(trial)
        if row["cached"]:
            return
        row.update(state="done", ended=self.clock())
        self.estimate()
        # a trial whose last report is a probe was stopped by the early stopper (a finished one reports its record)
        self._say(row, "stopped early" if "em_probe/general_misalignment" in (row.get("result") or {}) else "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row.update(state="FAILED", ended=self.clock(), cached=False)
        self.estimate()
        self._say(row, f"FAILED; log: {self.log_path(row) or trial.local_path or trial.path}")

    def on_step_end(self, iteration, trials, **info):
        if self.is_live:
            self._refresh()
        else:
            self.status_tick()

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._refresh(force=True)
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------------------ progress files
    def log_path(self, row: dict) -> Path | None:
        return self.sweep_dir / "logs" / f"{row['key']}.log" if self.sweep_dir and row.get("key") else None

    def poll(self) -> None:
        """Read each running trial's progress.json into its row (phase, step, total, loss, activity)."""
        for row in self.rows.values():
            if row["state"] != "running":
                continue
            progress = read_progress(self.sweep_dir / "trials" / row["key"]) if self.sweep_dir and row["key"] else None
            if progress and row["started"] is not None and progress.get("time", row["started"]) < row["started"] - 5:
                progress = None  # left by an earlier attempt at this trial
            if not progress:
                row["activity"] = "starting"
                continue
            phase = progress.get("phase") or "narrow"  # "benign": the trial's second fine-tune
            if phase != row["phase"]:
                row["loss"] = None  # the narrow fine-tune's last loss is not the benign one's
            row["phase"] = phase
            row["step"], row["total"] = progress.get("step"), progress.get("total") or row["total"]
            row["loss"] = progress.get("loss") if isinstance(progress.get("loss"), (int, float)) else row["loss"]
            row["activity"] = (
                f"{row['phase']} eval" if progress.get("done") else f"{row['phase']} {row['step']}/{row['total']}"
            )

    def _step(self, row: dict) -> str:
        """The state column: a running trial's phase and step (``narrow 40/150``, ``benign eval``), else its state."""
        if row["state"] == "running":
            return row["activity"] or "starting"
        if row["state"] == "done":
            return "✓ cached" if row["cached"] else "✓ done"
        return row["state"]

    # ------------------------------------------------------------------------------ plain lines
    def status_line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        running = [r for r in self.rows.values() if r["state"] == "running"]
        parts = []
        for r in running:
            loss = (
                f" loss {r['loss']:.3f}"
                if isinstance(r.get("loss"), (int, float)) and "eval" not in (r["activity"] or "")
                else ""
            )
            parts.append(f"{r['arm']} s{r['seed']} {r['activity'] or 'starting'}{loss}")
        line = f"{stamp(self.started, now)} status: {self.counts_text(now)}"
        return line + (" | " + "; ".join(parts) if parts else "")

    def status_tick(self, force: bool = False) -> bool:
        """Off a TTY: a status line when a running trial changed phase, or the interval passed; True if printed."""
        now = self.clock()
        if not force and now - self._last_poll < min(POLL_SECONDS, self.interval):
            return False
        self._last_poll = now
        self.poll()
        sig = (
            tuple(sorted(self.counts().items())),
            tuple(
                (k, r["activity"].rsplit(" ", 1)[0] if r["activity"] and "/" in r["activity"] else r["activity"])
                for k, r in self.rows.items()
                if r["state"] == "running"
            ),
        )
        if not force and sig == self._status_sig and now - self._last_status < self.interval:
            return False
        self._status_sig, self._last_status = sig, now
        print(self.status_line(now), flush=True)
        return True

    # ------------------------------------------------------------------------------ the table
    def shown_rows(self, budget: int) -> tuple[list[dict], dict[str, int]]:
        """The rows that fit in ``budget`` lines, in trial order, and the count of those folded away by
        state: running and failed rows first, then the latest finished and the next pending ones."""
        rows = list(self.rows.values())
        if len(rows) <= budget:
            return rows, {}
        by_state = {s: [r for r in rows if r["state"] == s] for s in ("running", "FAILED", "done", "pending")}
        folds = sum(1 for s in ("done", "pending") if by_state[s]) + (
            1 if len(by_state["running"]) + len(by_state["FAILED"]) > budget else 0
        )
        room = max(budget - folds, 1)
        keep = (by_state["running"] + by_state["FAILED"])[:room]
        room -= len(keep)
        done = sorted(by_state["done"], key=lambda r: r["ended"] or 0, reverse=True)
        pending = by_state["pending"]
        take_done = min(len(done), max(room // 2, room - len(pending)))
        keep += done[:take_done]
        keep += pending[: max(room - take_done, 0)]
        kept = {id(r) for r in keep}
        hidden: dict[str, int] = {}
        for r in rows:
            if id(r) not in kept:
                name = {"done": "finished", "FAILED": "failed"}.get(r["state"], r["state"])
                hidden[name] = hidden.get(name, 0) + 1
        return [r for r in rows if id(r) in kept], hidden

    def table(self, height: int | None = None):
        """The live table, at most ``height`` lines (the terminal's): title, header, rows, counts caption."""
        from rich import box
        from rich.table import Table

        now = self.clock()
        if height is None:
            height = self._live.console.size.height if self._live is not None else 10_000
        self.poll()
        table = Table(
            title=f"emray sweep · {duration_text(now - self.started)}",
            title_justify="left",
            caption=self.counts_text(now),
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            padding=(0, 0),
            expand=False,
        )  # one space between columns: 80 wide
        for name, justify in (
            ("arm", "left"),
            ("seed", "right"),
            ("state", "left"),
            ("loss", "right"),
            ("time", "right"),
            *((TABLE_SHORT[k], "right") for k in OBJECTIVES),
        ):
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]  # "left" | "right"
        style = {"running": "cyan", "done": "green", "FAILED": "bold red", "pending": "dim"}
        rows, hidden = self.shown_rows(max(height - TABLE_LINES, 3))
        for row in rows:
            elapsed = (
                duration_text((now if row["ended"] is None else row["ended"]) - row["started"])
                if row["started"] is not None
                else ""
            )
            result = row["result"]
            values = [f"{result[k]:.3f}" if isinstance(result.get(k), (int, float)) else "" for k in OBJECTIVES]
            loss = f"{row['loss']:.3f}" if isinstance(row.get("loss"), (int, float)) else ""
            table.add_row(
                row["arm"],
                str(row["seed"]),
                f"[{style.get(row['state'], '')}]{self._step(row)}[/]",
                loss,
                elapsed,
                *values,
            )
        for name, n in hidden.items():
            table.add_row(f"[dim]… {n} more {name}[/]", "", "", "", "", *[""] * len(OBJECTIVES))
        return table

    def _refresh(self, force: bool = False) -> None:
        now = self.clock()
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
    return "\n".join(
        [
            *closing_lines(sweep_dir, rows),
            "",
            format_arm_table(arms),
            f"intervals: {interval_note(arms)}",
            f"Pareto front (arm means, {len(front)} of {len(arms)}): {', '.join(front)}",
            f"results  {sweep_dir}/results.jsonl (per trial), {sweep_dir}/arms.jsonl (per arm)",
            f"plots    {sweep_dir}/plots/",
            f"report   emray report {sweep_dir}   -> {sweep_dir}/report.html",
            f"logs     {sweep_dir}/logs/<trial key>.log (emray sweep --verbose streams them)",
            f"W&B      {sweep_dir}/wandb_root/wandb/",
        ]
    )
