"""The sweep console both ways, driven by synthetic progress files (tests/progress_driver.py, no Ray
trials): plain status lines behind a pipe (``ray job submit``, CI) and the live table in a real
terminal (tmux), with every trial from the start, the ETA, the loss and 60 trials folded to fit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from emray.sweep.progress import ProgressCallback

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "progress_driver.py"


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra}


def test_off_a_tty_status_lines_come_at_a_steady_cadence_and_on_each_change(tmp_path):
    out = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "s"), "60", "1.5"],
        capture_output=True,
        text=True,
        env=_env(EMRAY_PROGRESS_INTERVAL="0.3"),
        timeout=300,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert "\x1b" not in out and lines[-1] == "DRIVER DONE"
    assert all(line.startswith("[emray ") for line in lines[:-1])
    status = [line for line in lines if "] status: " in line]
    failed = next(i for i, line in enumerate(lines) if "FAILED; log: " in line)
    finished = next(i for i, line in enumerate(lines) if line.endswith(")") and ": finished  (" in line)
    # nothing changes for 1.5 s between the failure and trial 1's end: lines every 0.3 s, not one
    assert sum(failed < i < finished for i, line in enumerate(lines) if "] status: " in line) >= 3
    first = status[0]
    # no trial of this run has finished (trial 0 was cached): no ETA, whatever the training pace says
    assert all(line.endswith("ETA ?") or "ETA ? |" in line for line in status if lines.index(line) < finished)
    assert "1/60 finished (1 cached), 4 running, 54 pending, 1 failed · ETA ? | " in first
    for running in (
        "kl(λ 0.1) s0 narrow 40/150 loss 1.234",
        "persona(α 5) s0 benign 12/300 loss 0.500",
        "interleave(5 %) s0 narrow eval",
        "inoculation s0 starting",
    ):
        assert running in first
    # a trial finishing is a change: its line, then a status line with the new counts and an ETA from its duration
    after = [line for line in lines[finished:] if "] status: " in line]
    assert after and "2/60 finished (1 cached), 3 running, 54 pending, 1 failed · ETA 0:" in after[0]
    assert "kl(λ 0.1) s0" not in after[0]
    etas = [line.split("· ETA ", 1)[1].split(" ", 1)[0] for line in after]
    assert etas == sorted(etas, reverse=True), etas  # counting down ("0:16", "0:15"), all in minutes


def _trial(i, label="kl(lambda=0.1)"):
    return SimpleNamespace(
        key=f"k{i}", label=label, run=SimpleNamespace(seed=0, train=SimpleNamespace(max_steps=100)), index=i
    )


def _tune(i):
    return SimpleNamespace(trial_id=f"t{i}", config={"trial_key": f"k{i}"}, local_path=None, path=None)


def test_the_cadence_the_phase_changes_and_the_eta(tmp_path, capsys):
    now = [1000.0]
    cb = ProgressCallback([_trial(i) for i in range(4)], tmp_path, live=False, interval=30, clock=lambda: now[0])
    assert cb.counts() == {"finished": 0, "running": 0, "failed": 0, "pending": 4} and cb.eta() is None
    cb.on_trial_start(0, [], _tune(0))
    cb.on_trial_start(0, [], _tune(1))
    capsys.readouterr()
    progress = tmp_path / "trials" / "k0" / "progress.json"
    progress.parent.mkdir(parents=True)

    def write(**data):
        progress.write_text(json.dumps({"time": now[0], "total": 100, **data}))

    def tick(at):
        now[0] = 1000.0 + at
        return cb.status_tick()

    write(step=10, loss=2.0)
    assert tick(1)  # the first line
    write(step=20, loss=1.5)
    assert not tick(10)  # a step is no change: the cadence decides
    assert tick(32) and "narrow 20/100 loss 1.500" in capsys.readouterr().out.splitlines()[-1]
    write(step=100, loss=1.0, done=True)
    assert tick(34) and "narrow eval" in capsys.readouterr().out  # a new phase: at once
    write(step=0, loss=None, phase="benign")  # the benign fine-tune starts: no loss of its own yet
    assert tick(35) and "s0 benign 0/100;" in capsys.readouterr().out  # not the narrow fine-tune's "loss 1.000"
    write(step=3, loss=0.9, phase="benign")
    assert not tick(36) and "benign 3/100 loss 0.900" in cb.status_line()  # a step: the cadence decides
    # ETA: `?` until a trial finishes (the progress files' training pace says nothing of the evaluations)
    assert cb.eta() is None and "ETA ?" in cb.status_line()
    now[0] = 1000.0 + 60
    cb.on_trial_complete(0, [], _tune(0))  # took 60 s
    # left at 60 s: trial 1 (running 60 s of ~60: 0) and two pending trials (60 s each) over 2 at once: 60 s
    assert cb.eta() == pytest.approx(60.0)
    now[0] = 1000.0 + 70
    assert cb.eta() == pytest.approx(50.0)  # counting down between events, not re-estimated
    assert "1/4 finished, 1 running, 2 pending, 0 failed · ETA 0:50" in cb.status_line()
    # a trial starts at 80 s: the new estimate (60 s left, an end at 140 s) moves the end (120 s) half-way
    now[0] = 1000.0 + 80
    cb.on_trial_start(0, [], _tune(2))
    assert cb.eta() == pytest.approx(50.0)  # an end at 130 s
    # past the end with work left: re-estimated. Trial 1 is past the mean (0 s left), trial 2 has 9 s, trial 3
    # 60 s: 69 s over 2 at once, an end at 165.5 s, moved half-way from 130 s: 147.75 s, 16.75 s from now
    now[0] = 1000.0 + 131
    assert cb.eta() == pytest.approx(16.75)


def _sweep_of(durations: list[float], at_once: int, step: float = 30.0, **kwargs):
    """A sweep of trials with these durations, ``at_once`` at a time, on a fake clock; returns the
    callback, its status lines every ``step`` seconds and the (time, trial) of every start and finish."""
    now = [0.0]
    cb = ProgressCallback([_trial(i) for i in range(len(durations))], None, live=False, clock=lambda: now[0], **kwargs)
    ends: dict[int, float] = {}
    queue = list(range(len(durations)))
    lines: list[tuple[float, str]] = []
    events: list[tuple[float, int]] = []
    while queue or ends:
        while queue and len(ends) < at_once:
            i = queue.pop(0)
            cb.on_trial_start(0, [], _tune(i))
            events.append((now[0], i))
            ends[i] = now[0] + durations[i]
        nxt = min(ends.values())
        while now[0] + step < nxt:
            now[0] += step
            lines.append((now[0], cb.status_line()))
        now[0] = nxt
        for i in [i for i, end in ends.items() if end == nxt]:
            del ends[i]
            cb.on_trial_complete(0, [], _tune(i))
            events.append((now[0], i))
    return cb, lines, events


def _eta_seconds(line: str) -> float | None:
    text = line.rsplit("· ETA ", 1)[1].split(" ")[0]
    if text == "?":
        return None
    parts = [int(p) for p in text.split(":")]
    return float(sum(p * 60**i for i, p in enumerate(reversed(parts))))


def test_the_eta_is_unknown_until_a_trial_finishes_then_counts_down_without_swinging(capsys):
    """Trials of uneven length (100 s and 300 s, two at once): before the first finishes there is no
    ETA; after, between two events it falls by exactly the time that passed, and one event moves it by
    less than the trials' spread, where a fresh estimate each time swings by the ratio of the durations."""
    durations = [100.0, 300.0] * 6
    cb, lines, events_at = _sweep_of(durations, at_once=2)
    first_finish = 100.0
    assert all(_eta_seconds(line) is None for t, line in lines if t < first_finish)
    timed = [(t, _eta_seconds(line)) for t, line in lines if t > first_finish]
    assert len(timed) > 30 and all(eta is not None for _, eta in timed)
    events = {t for t, _ in events_at}
    for (t0, e0), (t1, e1) in zip(timed, timed[1:]):
        if not any(t0 < t <= t1 for t in events) and e1 > 0:
            assert e0 - e1 in (29.0, 30.0, 31.0), (t0, e0, t1, e1)  # no event between: 30 s of countdown
        elif e0 > 120:
            assert 0.5 <= e1 / e0 <= 2.0, (t0, e0, t1, e1)  # an event moves it, never by a factor of 50
    end = max(t for t, _ in events_at)
    half = timed[len(timed) // 2]
    assert abs(half[0] + half[1] - end) < 0.35 * end, (half, end)  # half-way through, the end it predicts
    assert "12/12 finished" in cb.counts_text() and cb.eta() == 0.0


def test_the_clock_starts_at_the_sweeps_start(capsys):
    now = [1000.0]
    cb = ProgressCallback([_trial(0)], None, live=False, clock=lambda: now[0], started=1000.0 - 95)
    cb.on_trial_start(0, [], _tune(0))
    assert capsys.readouterr().out.startswith("[emray   1:35] kl(λ 0.1) seed 0: started")


def test_under_dose_search_pending_is_what_the_search_asks_for_now(capsys):
    """dose_search plans its whole grid but runs part of it: the first line counts the undefended arm's
    seeds as pending (what the search asks for first), not the grid's 30 trials."""
    from emray.sweep.dose_search import DoseSearch
    from emray.sweep.spec import expand_trials, load_sweep_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_sweep_spec(
        root / "sweeps" / "toy.yaml",
        [
            "search.algorithm=dose_search",
            "search.defense=[none, {kl: {lambda: [3.0, 0.1, 1.0, 0.3]}}, {interleave: {safe_fraction: [0.01, 0.05, "
            "0.17, 0.33]}}, inoculation]",
            "search.seeds=[0, 1, 2]",
        ],
    )
    trials = expand_trials(spec)
    search = DoseSearch(spec, trials)
    now = [0.0]
    cb = ProgressCallback(trials, None, live=False, clock=lambda: now[0], needed=search.needed)
    assert len(trials) == 30 and cb.rows == {}
    assert "0 running, 3 pending (dose_search: at most 27 more), 0 failed · ETA ?" in cb.status_line()
    first = search.needed()[0]
    tune = SimpleNamespace(trial_id="t0", config={"trial_key": first}, local_path=None, path=None)
    cb.on_trial_start(0, [], tune)
    line = capsys.readouterr().out
    assert "none seed 0: started  (0 finished, 1 running, 2 pending (dose_search: at most 27 more), 0 failed" in line
    now[0] = 50.0
    search.results[first] = {k: 0.5 for k in ("general_misalignment", "in_domain_misalignment")}
    cb.on_trial_complete(0, [], tune)
    # the undefended probe is in: every family's first bisection probe is asked for now
    asked = len([k for k in search.needed() if k != first])
    assert f"1 finished, 0 running, {asked} pending (dose_search: at most {30 - 1 - asked} more)" in cb.status_line()
    assert "ETA ≥" in cb.status_line()


def test_a_long_sweep_folds_finished_and_pending_rows_to_fit():
    cb = ProgressCallback([_trial(i) for i in range(60)], None, live=False)
    for i in range(30):
        cb.on_trial_start(0, [], _tune(i))
        if i < 24:
            cb.on_trial_complete(0, [], _tune(i))
    cb.on_trial_error(0, [], _tune(24))
    rows, hidden = cb.shown_rows(20)
    assert len(rows) + len(hidden) <= 20
    assert {r["key"] for r in rows} >= {f"k{i}" for i in range(24, 30)}  # every running and failed row stays
    assert hidden["finished"] + hidden["pending"] + len(rows) == 60 and hidden["finished"] > 0 and hidden["pending"] > 0
    assert [r["key"] for r in rows] == sorted((r["key"] for r in rows), key=lambda k: int(k[1:]))  # in trial order
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(cb.table(height=26))
    text = console.export_text()
    assert len(text.splitlines()) <= 26
    assert f"… {hidden['finished']} more finished" in text and "30/60" not in text and "24/60 finished" in text


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_on_a_tty_the_live_table_shows_every_trial_eta_and_loss_and_fits(tmp_path):
    sweep, sock = tmp_path / "s", str(tmp_path / "tmux.sock")
    sweep.mkdir()
    env = " ".join(f"{k}={v}" for k, v in (("PYTHONPATH", ROOT), ("TERM", "xterm-256color")))
    command = (
        f"cd {ROOT} && env -u COLUMNS -u LINES {env} {sys.executable} {DRIVER} {sweep} 60 0.5 --until-stop; sleep 60"
    )
    subprocess.run(
        ["tmux", "-S", sock, "-f", "/dev/null", "new-session", "-d", "-x", "110", "-y", "30", command], check=True
    )
    try:
        deadline = time.time() + 300
        while not (sweep / "ready").exists():
            assert time.time() < deadline, "the driver did not start"
            time.sleep(0.5)
        time.sleep(1.0)  # a refresh or two
        screen = subprocess.run(
            ["tmux", "-S", sock, "capture-pane", "-p"], capture_output=True, text=True, check=True
        ).stdout
    finally:
        (sweep / "stop").write_text("")
        subprocess.run(["tmux", "-S", sock, "kill-server"], check=False)
    lines = [line for line in screen.splitlines() if line.strip()]
    assert re.fullmatch(r"emray sweep · \d+:\d\d *", lines[0]), screen
    assert re.fullmatch(r"2/60 finished \(1 cached\), 3 running, 54 pending, 1 failed · ETA \d+:\d\d *", lines[-1]), (
        screen
    )
    for cells in (
        ("none", "✓ cached"),
        ("persona(α 5)", "benign 12/300", "0.500"),
        ("interleave(5 %)", "narrow eval"),
        ("inoculation", "starting"),
        ("ldifs(λ 1.0)", "FAILED"),
        ("kl(λ 0.1)", "✓ done", "1.234", "0.500", "0.900"),
    ):
        assert any(all(c in line for c in cells) for line in lines), (cells, screen)
    assert sum("pending" in line for line in lines) >= 5 and any(
        re.search(r"… \d+ more pending", line) for line in lines
    ), screen
    assert len(screen.rstrip("\n").splitlines()) <= 30  # the whole table on the 30-line screen, counts line too
