"""A trial too large for the cluster is refused before anything waits for it (emray/sweep/capacity.py):
the rehearsal of the 7B spec sat 30 minutes at "starting" because two 1-CPU Ray Train workers and the
Tune trial's 0.01 CPU do not fit a 2-CPU node (docs/cluster.md "Rehearsal"). Cheap: nothing trains; one
test starts a local Ray cluster to check the refusal of a real run."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from conftest import ROOT, SHARED_DATA

from emray.sweep.capacity import Node, capacity_problems, local_nodes, packs
from emray.sweep.spec import load_sweep_spec

SPEC = ROOT / "sweeps" / "qwen2.5-7b-code.yaml"


def spec_with(*sets: str):
    return load_sweep_spec(str(SPEC), list(sets))


def test_packing_against_the_sums():
    node = [Node("n", 2, 0)]
    trial, worker = {"CPU": 0.01, "GPU": 0}, {"CPU": 1, "GPU": 0}
    assert not packs([trial, worker, worker], node)  # 2.01 > 2: the rehearsal's hang
    assert packs([trial, {"CPU": 0.5, "GPU": 0}, {"CPU": 0.5, "GPU": 0}], node)  # 1.01
    # a worker group may spread over nodes (PACK), but no bundle splits across two
    assert packs([worker, worker, trial], [Node("a", 1, 0), Node("b", 1.01, 0)])
    assert not packs([{"CPU": 1.5, "GPU": 0}], [Node("a", 1, 0), Node("b", 1, 0)])
    gpu = {"CPU": 8, "GPU": 1}
    assert packs([trial, gpu, gpu], [Node("g", 48, 2)]) and not packs([trial, gpu, gpu], [Node("g", 48, 1)])
    # an autoscaler node type counts as many nodes as it may add
    assert packs([trial, gpu, gpu], [Node("head", 16, 0), Node("gpu", 48, 1, count=2)])


def test_two_one_cpu_workers_on_a_two_cpu_node_are_refused_with_the_keys_and_numbers():
    spec = spec_with("base.resources.use_gpu=false", "base.resources.cpus_per_worker=1")
    (problem,) = capacity_problems(spec, [Node("this machine", 2, 0)], "this machine", has_stages=False)
    assert "needs 2.01 CPU, 0 GPU at once" in problem, problem
    for key in ("base.resources.num_workers=2", "base.resources.cpus_per_worker=1", "base.resources.use_gpu=false"):
        assert key in problem, problem
    assert "this machine (2 CPU, 0 GPU)" in problem and "30-minute" in problem
    # the largest share that fits, by a direct computation: (2 - 0.01) / 2 to the hundredth below
    assert f"cpus_per_worker={math.floor((2 - 0.01) / 2 * 100) / 100:g} or less" in problem, problem
    ok = spec_with("base.resources.use_gpu=false", "base.resources.cpus_per_worker=0.5")
    assert capacity_problems(ok, [Node("this machine", 2, 0)], "this machine", has_stages=False) == []


def test_gpu_trials_and_stages_need_gpu_nodes():
    spec = load_sweep_spec(str(SPEC), [])  # as shipped: 2 workers x (8 CPU, 1 GPU), stages on 8 CPU + 1 GPU
    head_only = [Node("head", 16, 0)]
    problems = capacity_problems(spec, head_only, "the Ray cluster")
    assert len(problems) == 2, problems
    assert "needs 16.01 CPU, 2 GPU at once" in problems[0] and "base.resources.use_gpu=true" in problems[0]
    assert "No node has a GPU" in problems[0]
    assert "resources.cpus_for_stages=8" in problems[1] and "resources.gpus_for_stages=1" in problems[1]
    # cluster.yaml's GPU node type (4 x L40S), added by the autoscaler: everything fits
    assert capacity_problems(spec, head_only + [Node("gpu_l40s", 48, 4, count=4)], "the Ray cluster") == []


def test_in_trial_launcher_holds_only_its_actor():
    spec = spec_with(
        "base.resources.use_gpu=false", "base.resources.num_workers=1", "base.resources.deepspeed=none",
        "base.resources.checkpoint_every=0", "base.resources.max_failures=0", "base.resources.cpus_per_worker=3",
    )  # fmt: skip
    (problem,) = capacity_problems(spec, [Node("m", 2, 0)], "m", has_stages=False)
    assert "the trial's actor" in problem and "needs 3 CPU" in problem and "cpus_per_worker=2 or less" in problem


def dry_run(capsys, *args: str) -> tuple[int, str, str]:
    from emray.cli import main

    code = main(["sweep", str(SPEC), "--dry-run", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dry_run_refuses_a_trial_larger_than_this_machine(capsys):
    cpus = local_nodes()[0].cpu
    sets = (
        "model.name=smollm2-135m",
        f"data.fine={SHARED_DATA}/train/code.jsonl",
        f"data.safe_pool={SHARED_DATA}/safe/wildguard_sample.jsonl",
        f"eval.general={SHARED_DATA}/questions/general.yaml",
        "eval.in_domain=[]",
        "base.resources.use_gpu=false",
        f"base.resources.cpus_per_worker={cpus:g}",
        "resources.gpus_for_stages=0",
        "resources.cpus_for_stages=1",
        "search.defense=[none]",
    )
    code, out, err = dry_run(capsys, *[a for p in sets for a in ("--set", p)])
    assert code == 2, out[-2000:] + err[-2000:]
    assert f"needs {2 * cpus + 0.01:g} CPU" in err and f"this machine ({cpus:g} CPU" in err, err
    assert "base.resources.cpus_per_worker" in err
    # with --address (a cluster elsewhere) the dry run says it did not check
    code, out, err = dry_run(capsys, "--no-file-check", "--address", "ray://x:10001")
    assert code == 0 and "resources: not checked here" in out, err[-2000:]


def test_a_real_run_refuses_before_any_stage(tmp_path):
    """The sweep itself, on a local Ray cluster: refused with exit code 2 before a stage or trial starts."""
    cpus = local_nodes()[0].cpu
    sets = {
        "storage": str(tmp_path / "out"),
        "model.name": "tiny",
        "data.fine": f"{SHARED_DATA}/train/code.jsonl",
        "data.safe_pool": f"{SHARED_DATA}/safe/wildguard_sample.jsonl",
        "eval.general": f"{SHARED_DATA}/questions/general.yaml",
        "eval.in_domain": "[]",
        "base.resources.use_gpu": "false",
        "base.resources.deepspeed": "none",
        "base.resources.launcher": "ray_train",
        "base.resources.cpus_per_worker": f"{cpus:g}",
        "resources.gpus_for_stages": "0",
        "search.defense": "[none]",
        "search.seeds": "[0]",
        "wandb.enabled": "false",
    }
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", "sweep", str(SPEC), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]],
        capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "cannot be scheduled on the Ray cluster" in out.stderr and f"needs {2 * cpus + 0.01:g} CPU" in out.stderr
    assert not (tmp_path / "out" / "qwen7b-code" / "trials").exists()
