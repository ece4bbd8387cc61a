"""Whether a trial's resources fit the cluster, checked before anything waits for them.

Ray never refuses a request it cannot place: a Ray Train worker group larger than the cluster waits for
the worker-start timeout (30 minutes in a sweep, emray/sweep/runner.py ``worker_env``), a stage task too
large for every node waits for ever. So the sweep packs what one trial holds at once onto the nodes it
can use (the running nodes, plus the node types an autoscaler may add) and stops early, naming the keys
and the numbers, when even the best packing fails:

- a trial that trains in its own actor (``resources.launcher``): that actor, ``cpus_per_worker`` CPUs;
- a Ray Train trial: the Tune trial's token share beside its worker group (``num_workers`` bundles of
  ``cpus_per_worker`` CPUs and, with ``use_gpu``, ``gpus_per_worker`` GPUs), then beside its evaluation task;
- a stage (once, before the trials): ``resources.cpus_for_stages`` / ``gpus_for_stages``.

Ray Train's worker group uses the PACK strategy (bundles may spread over nodes), so the bundles are packed
first-fit decreasing over all the nodes, not required on one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emray.sweep.checks import PreflightError

if TYPE_CHECKING:
    from emray.sweep.spec import SweepSpec

#: resources emray asks Ray for
KINDS = ("CPU", "GPU")
#: the largest number of copies of one autoscaler node type tried in a packing (a trial is a few bundles)
MAX_COPIES = 64


@dataclass(frozen=True)
class Node:
    """What one node offers; ``count`` > 1 for an autoscaler node type that may be added that many times."""

    name: str
    cpu: float
    gpu: float
    count: int = 1

    def describe(self) -> str:
        many = f" x {self.count}" if self.count > 1 else ""
        return f"{self.name}{many} ({self.cpu:g} CPU, {self.gpu:g} GPU)"


def _bundle(cpu: float, gpu: float = 0.0) -> dict[str, float]:
    return {"CPU": cpu, "GPU": gpu}


def packs(bundles: list[dict[str, float]], nodes: list[Node]) -> bool:
    """Whether every bundle fits a node, each node's room shared by the bundles placed on it (first-fit
    decreasing: largest GPU then CPU request first)."""
    room = [{"CPU": n.cpu, "GPU": n.gpu} for n in nodes for _ in range(min(n.count, MAX_COPIES))]
    for bundle in sorted(bundles, key=lambda b: (b["GPU"], b["CPU"]), reverse=True):
        for free in room:
            # a small tolerance: 0.5 + 0.5 + 0.01 of 1.01 must fit despite float sums
            if all(bundle[k] <= free[k] + 1e-9 for k in KINDS):
                for k in KINDS:
                    free[k] -= bundle[k]
                break
        else:
            return False
    return True


# ------------------------------------------------------------------------------------ the demand
def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What a Tune trial's actor holds. A trial that trains and evaluates in its own process holds the
    worker's CPUs; one that only waits on its Ray Train worker group and evaluation task (which hold the
    real resources) holds a token CPU share (Tune rejects an empty bundle), so it never starves them."""
    res = spec.base.resources
    return {"cpu": res.cpus_per_worker} if res.runs_in_trial() else {"cpu": 0.01}


def trial_phases(spec) -> list[tuple[str, list[dict[str, float]]]]:
    """(phase, bundles held at once) for one trial of ``spec``."""
    res = spec.base.resources
    trial = _bundle(trial_resources(spec)["cpu"])
    if res.runs_in_trial():
        return [("the trial's actor (it trains and evaluates in its own process)", [trial])]
    worker = _bundle(res.cpus_per_worker, res.gpus_per_worker if res.use_gpu else 0.0)
    evaluation = _bundle(res.cpus_per_worker, 1.0 if res.use_gpu else 0.0)  # emray/sweep/evaluation.py
    return [
        ("the Tune trial + its Ray Train worker group", [trial] + [worker] * res.num_workers),
        ("the Tune trial + its evaluation task", [trial, evaluation]),
    ]


def _describe(bundle: dict[str, float]) -> str:
    return f"{bundle['CPU']:g} CPU/{bundle['GPU']:g} GPU"


def _total(bundles: list[dict[str, float]]) -> str:
    return f"{sum(b['CPU'] for b in bundles):g} CPU, {sum(b['GPU'] for b in bundles):g} GPU"


def _keys(spec) -> str:
    res = spec.base.resources
    keys = [
        f"base.resources.num_workers={res.num_workers}",
        f"base.resources.cpus_per_worker={res.cpus_per_worker:g}",
        f"base.resources.use_gpu={str(res.use_gpu).lower()}",
    ]
    if res.use_gpu:
        keys.append(f"base.resources.gpus_per_worker={res.gpus_per_worker:g}")
    if not res.runs_in_trial() and res.launcher == "auto":
        keys.append(f"launcher: ray_train, because it needs {res.in_trial_refusal()}")
    return ", ".join(keys)


def _largest_cpus_per_worker(spec, nodes: list[Node]) -> float | None:
    """The largest ``cpus_per_worker`` (to 0.01) with which every phase of a trial packs, or None."""
    res = spec.base.resources

    def fits(cpus: float) -> bool:
        trial = spec.model_copy(
            update={
                "base": spec.base.model_copy(update={"resources": res.model_copy(update={"cpus_per_worker": cpus})})
            }
        )
        return all(packs(bundles, nodes) for _, bundles in trial_phases(trial))

    low, high = 1, int(res.cpus_per_worker * 100)  # in hundredths of a CPU
    if not fits(low / 100):
        return None
    while low < high:  # the largest hundredth that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid / 100) else (low, mid - 1)
    return low / 100


def capacity_problems(spec, nodes: list[Node], where: str, has_stages: bool = True) -> list[str]:
    """One line per thing that can never be scheduled on ``nodes`` (``where`` names them)."""
    offered = "; ".join(n.describe() for n in nodes) or "no nodes"
    problems = []
    for phase, bundles in trial_phases(spec):
        if packs(bundles, nodes):
            continue
        hint = ""
        res = spec.base.resources
        if res.use_gpu and not any(n.gpu for n in nodes):
            hint = " No node has a GPU: set base.resources.use_gpu=false."
        elif (best := _largest_cpus_per_worker(spec, nodes)) is not None:
            hint = f" It fits with base.resources.cpus_per_worker={best:g} or less."
        elif res.num_workers > 1:
            hint = " Lower base.resources.num_workers."
        problems.append(
            f"a trial cannot be scheduled on {where}: {phase} needs {_total(bundles)} at once "
            f"({len(bundles)} bundle(s): {', '.join(_describe(b) for b in bundles)}; "
            f"{_keys(spec)}), and the nodes offer {offered}. Ray would wait for it (Ray Train's worker group "
            f"for its 30-minute start timeout, a task for ever).{hint}"
        )
        break  # the first phase that cannot run is the one to fix
    stage = _bundle(spec.resources.cpus_for_stages, spec.resources.gpus_for_stages)
    if has_stages and not packs([stage], nodes):
        problems.append(
            f"a stage cannot be scheduled on {where}: it needs {_total([stage])} on one node "
            f"(resources.cpus_for_stages={spec.resources.cpus_for_stages:g}, "
            f"resources.gpus_for_stages={spec.resources.gpus_for_stages:g}), and the nodes offer {offered}"
        )
    return problems


def check_capacity(spec, nodes: list[Node], where: str, has_stages: bool = True) -> None:
    if problems := capacity_problems(spec, nodes, where, has_stages):
        raise PreflightError("the sweep cannot run as planned:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------- the offer
def local_nodes() -> list[Node]:
    """This machine as the local Ray cluster a sweep without ``--address`` starts would see it."""
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.utils import get_num_cpus

    gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    visible = get_accelerator_manager_for_resource("GPU").get_current_process_visible_accelerator_ids()
    if visible is not None:  # CUDA_VISIBLE_DEVICES narrows what ray.init gives the node
        gpus = min(gpus, len(visible))
    return [Node("this machine", float(get_num_cpus()), float(gpus))]


def cluster_nodes() -> list[Node]:
    """The running cluster's alive nodes (``ray.nodes()``), plus the node types its autoscaler may add."""
    import ray

    nodes = [
        Node(
            f"node {n.get('NodeManagerAddress', '?')}",
            float(n["Resources"].get("CPU", 0)),
            float(n["Resources"].get("GPU", 0)),
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]
    return nodes + autoscaler_node_types()


def autoscaler_node_types() -> list[Node]:
    """Node types an autoscaler can still add: from the cluster config Ray's GCS holds (autoscaler v2,
    KubeRay) or, for a ``ray up`` cluster, the head node's ``~/ray_bootstrap_config.yaml``."""
    out: list[Node] = []
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older or foreign GCS: fall back to the bootstrap file
        config = None
    for group in getattr(config, "node_group_configs", None) or []:
        if group.max_count != 0:
            count = MAX_COPIES if group.max_count < 0 else group.max_count
            out.append(
                Node(f"{group.name} (autoscaled)", group.resources.get("CPU", 0), group.resources.get("GPU", 0), count)
            )
    bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
    if not out and bootstrap.exists():
        import yaml

        types = (yaml.safe_load(bootstrap.read_text()) or {}).get("available_node_types") or {}
        for name, node_type in types.items():
            count = int(node_type.get("max_workers", 0) or 0)
            resources = node_type.get("resources") or {}
            if count > 0:
                out.append(
                    Node(
                        f"{name} (autoscaled)", resources.get("CPU", 0), resources.get("GPU", 0), min(count, MAX_COPIES)
                    )
                )
    return out


def describe_capacity(spec, nodes: list[Node], where: str) -> str:
    """The dry-run plan's line: what one trial holds at once and where it fits."""
    need = max((sum(b["CPU"] for b in bs), sum(b["GPU"] for b in bs)) for _, bs in trial_phases(spec))
    return f"resources: a trial holds at most {need[0]:g} CPU, {need[1]:g} GPU at once; checked against {where}: " + (
        "; ".join(n.describe() for n in nodes) or "no nodes"
    )
