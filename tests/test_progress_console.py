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
    assert "1/60 finished (1 cached), 4 running, 54 pending, 1 failed · ETA " in first
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
    write(step=3, loss=0.9, phase="benign")
    assert tick(36) and "benign 3/100 loss 0.900" in capsys.readouterr().out
    # ETA: before a trial finishes, from the training pace; after, from the finished trials' mean duration
    now[0] = 1000.0 + 60
    cb.on_trial_complete(0, [], _tune(0))  # took 60 s
    now[0] = 1000.0 + 70
    # left: trial 1 (running 70 s of ~60: 0) and two pending trials (60 s each) over 2 at once
    assert cb.eta() == pytest.approx(60.0)
    assert "1/4 finished, 1 running, 2 pending, 0 failed · ETA 1:00" in cb.status_line()


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
