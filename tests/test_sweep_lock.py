"""One sweep per folder (sweep.lock with pid and host) and what an interrupted sweep says and exits with.

The lock tests use real processes; the interrupt tests drive ``emray sweep`` with the trials replaced
by a stand-in (seconds). The real thing, SIGINT to a running sweep's process group, is the slow test
at the end (``make test-slow``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA

from emray.sweep.lock import LOCK_FILE, SweepLock, SweepLockError

SPEC = f"""\
name: lk
storage: {{storage}}
base:
  model: {{{{name: tiny}}}}
  lora: {{{{r: 4, alpha: 8}}}}
  data: {{{{fine: {SHARED_DATA}/train/medical.jsonl, max_examples: 8}}}}
  train: {{{{lr: 1.0e-3, max_steps: 2, batch_size: 4, max_len: 256, progress: false}}}}
  eval:
    general: {SHARED_DATA}/questions/general.yaml
    samples_per_paraphrase: 1
    max_questions: 1
    max_new_tokens: 4
    judge: {{{{base_url: local, backend: rules}}}}
search:
  defense: [none, inoculation, {{{{inoculation: {{{{prompt: be bad}}}}}}}}]
  seeds: [0]
resources: {{{{max_concurrent_trials: 1}}}}
wandb: {{{{enabled: false}}}}
"""

HOLD = """\
import sys, time
from emray.sweep.lock import SweepLock
lock = SweepLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def spec_file(tmp_path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(storage=tmp_path / "out"))
    return spec


def test_a_second_sweep_on_a_held_folder_refuses_at_once(tmp_path, spec_file, capsys):
    from emray.cli import main

    folder = tmp_path / "out" / "lk"
    proc = _holder(folder)
    try:
        holder = json.loads((folder / LOCK_FILE).read_text())
        assert holder["pid"] == proc.pid and holder["host"] == socket.gethostname()
        with pytest.raises(SweepLockError, match=rf"in use by another emray sweep \(pid {proc.pid} on host "):
            SweepLock(folder).acquire()
        started = time.time()
        assert main(["sweep", str(spec_file)]) == 2
        err = capsys.readouterr().err
        assert time.time() - started < 20  # no Ray, no stage: refused before anything starts
        assert (
            f"emray sweep: error: {folder} is in use by another emray sweep (pid {proc.pid} on host "
            f"{socket.gethostname()}, since "
        ) in err and f"kill {proc.pid}" in err
        assert not (folder / "spec.json").exists()  # the holder's files are untouched
        assert json.loads((folder / LOCK_FILE).read_text()) == holder
    finally:
        proc.kill()
        proc.wait()
    # the holder died without releasing: a stale lock, taken over with a message
    with SweepLock(folder) as lock:
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert "taking over the stale sweep lock" in capsys.readouterr().err
        with pytest.raises(SweepLockError, match=rf"pid {os.getpid()}"):
            SweepLock(folder).acquire()  # a second holder in this process is refused too
    assert not (folder / LOCK_FILE).exists() and not lock.held


def test_lock_of_another_host_or_a_reused_pid(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "since": time.time()}))
    with pytest.raises(SweepLockError, match=rf"pid {os.getpid()} on host elsewhere.*If that host is gone, remove"):
        SweepLock(folder).acquire()
    # this host, a live pid, but a lock older than that process: the pid was reused, the lock is stale
    (folder / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": 1.0}))
    with SweepLock(folder):
        assert json.loads((folder / LOCK_FILE).read_text())["since"] > 1.0
    (folder / LOCK_FILE).write_text("{not json")
    with pytest.raises(SweepLockError, match=rf"{folder / LOCK_FILE}: cannot read the sweep lock"):
        SweepLock(folder).acquire()


def _fake_sweep(monkeypatch, finish: int, then):
    """Replace the trials by: plan, write ``finish`` results, then ``then()`` (an interrupt)."""
    from emray.sweep import runner

    def fake(spec, resume, address, sweep_dir, state):
        plan = state["plan"] = runner.make_plan(spec)
        for trial in plan.trials[:finish]:
            out = runner.trial_dir(sweep_dir, trial)
            out.mkdir(parents=True)
            (out / runner.RESULT_FILE).write_text(json.dumps({"trial_key": trial.key}))
        (runner.trial_dir(sweep_dir, plan.trials[-1])).mkdir(parents=True)
        (runner.trial_dir(sweep_dir, plan.trials[-1]) / runner.ERROR_FILE).write_text("KeyboardInterrupt\n")
        then()
        raise AssertionError("not interrupted")

    monkeypatch.setattr(runner, "_run_sweep", fake)


@pytest.mark.parametrize("signame, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupt_says_so_lists_finished_and_pending_and_exits_128_plus_signal(
    tmp_path, spec_file, capsys, monkeypatch, signame, code
):
    from emray.cli import main

    def interrupt():
        os.kill(os.getpid(), getattr(signal, signame))  # the real signal, through the sweep's handlers
        time.sleep(5)

    _fake_sweep(monkeypatch, finish=1, then=interrupt)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["sweep", str(spec_file)]) == code
    err = capsys.readouterr().err
    assert (
        f"[emray] interrupted ({signame}): 1 finished (kept), 2 not finished (they run on `emray sweep SPEC --resume`"
        in err
    )
    finished, pending = err.split("will resume:")
    assert "finished:\n    - none (seed 0" in finished
    assert "- inoculation (seed 0" in pending and "- inoculation(prompt=be bad) (seed 0" in pending
    assert "failed" not in err  # interrupted and never-started trials are not failures
    assert not (tmp_path / "out" / "lk" / LOCK_FILE).exists()  # released
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigint_to_a_real_sweep_then_resume(tmp_path, spec_file):
    """Ctrl-C (SIGINT to the process group) on a running sweep: exit 130, nothing left running,
    and ``--resume`` recomputes nothing that finished."""
    trials = tmp_path / "out" / "lk" / "trials"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "emray.cli", "sweep", str(spec_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    deadline = time.time() + 600
    while time.time() < deadline and not list(trials.glob("*/result.json")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(1)
    finished = list(trials.glob("*/result.json"))
    assert finished, "no trial finished before the deadline"
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "[emray] interrupted (SIGINT)" in out and "will resume:" in out
    with pytest.raises(ProcessLookupError):  # the driver's group is gone: nothing keeps running
        for _ in range(30):
            os.killpg(proc.pid, 0)
            time.sleep(1)
    done = {
        p.parent.name: (p.parent / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
        for p in trials.glob("*/result.json")
    }
    resumed = subprocess.run(
        [sys.executable, "-m", "emray.cli", "sweep", str(spec_file), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert len(list(trials.glob("*/result.json"))) == 3
    for key, mtime in done.items():
        assert (trials / key / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == mtime
