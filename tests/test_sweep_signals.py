"""SIGTERM while the driver waits inside ``ray.get`` (the stages) is reported as SIGTERM, exit 143.

Ray turns an exception raised by a signal handler during its wait into a plain KeyboardInterrupt, so the
rehearsal's ``kill -TERM`` during the pool scores read "interrupted (SIGINT)", exit 130
(docs/cluster.md "Rehearsal", item 3). The stages are replaced by a Ray task that sleeps; Ray is real."""

from __future__ import annotations

import os
import signal
import threading

from conftest import SHARED_DATA

SPEC = f"""\
name: sig
storage: STORAGE
base:
  model: {{name: tiny}}
  data: {{fine: {SHARED_DATA}/train/medical.jsonl}}
  eval: {{general: {SHARED_DATA}/questions/general.yaml, judge: {{base_url: local, backend: rules}}}}
search: {{defense: [none], seeds: [0]}}
wandb: {{enabled: false}}
"""


def test_sigterm_inside_ray_get_exits_143(tmp_path, capsys, monkeypatch):
    from emray.cli import main
    from emray.sweep import runner

    def stages_that_wait(spec, resume, address, sweep_dir, state):
        import ray

        state["plan"] = runner.make_plan(spec)
        runner.ensure_ray(address)
        runner._catch_sigterm()  # as _run_sweep does after ray.init, which sets its own handler
        sleeper = ray.remote(num_cpus=0)(lambda: __import__("time").sleep(120)).remote()
        threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        ray.get(sleeper)  # the driver waits here, as on a stage
        raise AssertionError("not interrupted")

    monkeypatch.setattr(runner, "_run_sweep", stages_that_wait)
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("STORAGE", str(tmp_path / "out")))
    assert main(["sweep", str(spec)]) == 143
    err = capsys.readouterr().err
    assert "[emray] interrupted (SIGTERM): 0 finished (kept), 1 not finished" in err, err
