"""A real two-node Ray cluster on this machine: ``ray start --head`` plus ``ray start --address``, with
token authentication on (one shared RAY_AUTH_TOKEN), custom resources naming the nodes.

The fast test runs one two-worker fine-tune whose ranks must land on different nodes (1 CPU each);
the slow one runs ``emray sweep --address`` with stages and the judge pool across both nodes.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports() -> list[str]:
    # Every fixed-default port gets a free one: other Ray clusters may share this machine.
    names = (
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    return [a for name in names for a in (name, str(_free_port()))]


class TwoNodeCluster:
    def __init__(self, tmp: Path, cpus: tuple[int, int]):
        self.tmp, self.port = tmp, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # e.g. an earlier ray.init's
        self.env = {
            **inherited,
            "PYTHONPATH": str(ROOT),
            "RAY_AUTH_MODE": "token",  # what Ray 2.60 does by default, made explicit
            "RAY_AUTH_TOKEN": uuid.uuid4().hex,  # every node and the driver share it
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        ray = str(Path(sys.executable).parent / "ray")
        # Short: Ray's unix sockets live under it (AF_UNIX paths are limited to 107 bytes).
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="emr-", dir="/tmp"))
        temp = str(self.ray_tmp)
        self._start(
            [
                ray,
                "start",
                "--head",
                "--port",
                str(self.port),
                "--num-cpus",
                str(cpus[0]),
                "--resources",
                '{"node_head": 1}',
                "--include-dashboard=false",
                "--dashboard-port",
                str(_free_port()),
                "--temp-dir",
                temp,
                "--disable-usage-stats",
                *_ports(),
            ]
        )
        self._start(
            [
                ray,
                "start",
                "--address",
                self.address,
                "--num-cpus",
                str(cpus[1]),
                "--resources",
                '{"node_worker": 1}',
                *_ports(),
            ]
        )

    def _start(self, args):
        try:
            out = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as err:
            self.stop()
            pytest.fail(f"{' '.join(args[:3])} did not finish in 300 s: {err.stdout!r:.2000} {err.stderr!r:.2000}")
        if out.returncode != 0:
            self.stop()
            pytest.fail(f"{' '.join(args[:3])} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    def stop(self):
        """Kill this cluster's processes only (``ray stop`` would stop every Ray on the machine).

        Its processes are those whose command line names its temp dir, and their descendants; they
        share the test's process group, so no group kill.
        """
        parents = {}
        mine = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if str(self.ray_tmp) in (proc / "cmdline").read_bytes().decode(errors="ignore"):
                    mine.add(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
        grew = True
        while grew:
            children = {pid for pid, parent in parents.items() if parent in mine} - mine
            grew = bool(children)
            mine |= children
        mine.discard(os.getpid())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in mine:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = TwoNodeCluster(tmp_path_factory.mktemp("cluster"), cpus=(1, 1))
    yield c
    c.stop()


DRIVER = """
import json, sys
from pathlib import Path
import ray
sys.path.insert(0, "tests")
from conftest import make_run_config
from emray.train.worker import fit_with_ray_train

ray.init(address=sys.argv[1], log_to_driver=False)
names = {n["NodeID"]: [r for r in n["Resources"] if r.startswith("node_") and not r.startswith("node:")] for n in ray.nodes() if n["Alive"]}
tmp = Path(sys.argv[2])
cfg = make_run_config(tmp, resources={"num_workers": 2})
result = fit_with_ray_train(cfg, tmp / "out", str(tmp / "storage"))
print("RESULT " + json.dumps({"nodes": [names[n] for n in result.metrics["train_nodes"]], "world_size": result.metrics["world_size"],
                               "loss": result.metrics["train_loss"]}))
"""


def test_two_node_fine_tune_spans_both_nodes(cluster, tmp_path):
    """One DDP fine-tune, rank 0 on one node and rank 1 on the other (each node has one CPU)."""
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, cluster.address, str(tmp_path)],
        env=cluster.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["world_size"] == 2
    assert sorted(n for names in result["nodes"] for n in names) == ["node_head", "node_worker"]
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()


def test_driver_without_the_token_is_refused(cluster, tmp_path):
    env = {**cluster.env, "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    code = f"import ray; ray.init(address={cluster.address!r}, log_to_driver=False); print(ray.cluster_resources())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "auth" in (out.stdout + out.stderr).lower()


NODE_NAMES = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print("NODES " + json.dumps({n["NodeID"]: [r for r in n["Resources"] if r in ("node_head", "node_worker")][0] for n in ray.nodes() if n["Alive"]}))
"""


@pytest.fixture(scope="module")
def sweep_cluster(tmp_path_factory):
    c = TwoNodeCluster(tmp_path_factory.mktemp("sweep_cluster"), cpus=(2, 2))
    yield c
    c.stop()


@pytest.mark.slow
def test_sweep_runs_trials_on_both_nodes(sweep_cluster, tmp_path):
    """``emray sweep --address``: a stage (persona vector), the judge pool and two trials, on two nodes.

    A training worker asks for 1.5 CPUs on 2-CPU nodes, so two concurrent trials cannot share a node.
    (With 1-CPU nodes the trials deadlock: each Tune trial holds a 0.01 CPU token, which can leave
    no node a whole CPU for a worker.)
    """
    cluster = sweep_cluster
    overrides = [
        f"storage={tmp_path}",
        "train.max_steps=6",
        "eval.samples_per_paraphrase=1",
        "eval.max_new_tokens=8",
        'search.defense=[none, {persona: {alpha: 5.0, prompts: "organism:data/persona/evil_extract.json"}}]',
        "resources.judge_actors=2",
        "base.resources.cpus_per_worker=1.5",
    ]
    env = {**cluster.env, "EMRAY_ORGANISM": "quick"}
    args = [sys.executable, "-m", "emray.cli", "sweep", str(ROOT / "sweeps" / "toy.yaml"), "--address", cluster.address]
    out = subprocess.run(
        [*args, *[a for o in overrides for a in ("--set", o)]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    rows = [json.loads(line) for line in (tmp_path / "toy" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["label"].split("(")[0] for r in rows) == ["none", "persona"]
    assert all(0.0 <= r["general_misalignment"] <= 1.0 for r in rows)  # judged through the pool

    names = subprocess.run(
        [sys.executable, "-c", NODE_NAMES, cluster.address],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    node_name = json.loads(names.stdout.split("NODES ", 1)[1])
    used = set()
    for metrics in (tmp_path / "toy" / "trials").glob("*/metrics.json"):
        used |= {node_name[n] for n in json.loads(metrics.read_text())["summary"]["train_nodes"]}
    assert used == {"node_head", "node_worker"}
