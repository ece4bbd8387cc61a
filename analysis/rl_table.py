"""The RL scenario's table and reward curves (docs/rl.md) from a finished ``scenario: rl`` sweep.

    python analysis/rl_table.py SWEEP_DIR [--warm-start EVAL_DIR ...] [--plot OUT.png]

Reads every finished trial (``trials/*/result.json``). Per arm: reward learned (``reward_gain``: mean training reward over the last 10 % of steps minus the
first 10 %) and the held-out reward, each as the mean over seeds with a 95 % t interval; general EM,
in-domain misalignment and general incoherence pooled over seeds (answer counts, 95 % Wilson interval,
as ``arms.jsonl``). ``--warm-start`` adds a row for ``emray eval`` folders of the warm-start adapters.
``--plot`` draws each arm's training-reward curve (mean over seeds, min-max band).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
RATES = ("general_misalignment", "in_domain_misalignment", "general_incoherence")


def mean_ci(values: list[float]) -> str:
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.2f}"
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return f"{m:.2f} [{m - half:.2f}, {m + half:.2f}]"


def wilson(k: int, n: int) -> str:
    from emray.eval.criteria import wilson_interval

    lo, hi = wilson_interval(k, n)
    return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def pooled(rows: list[dict], rate: str) -> str:
    k = sum(r.get(f"{rate}_k") or 0 for r in rows)
    n = sum(r.get(f"{rate}_n") or 0 for r in rows)
    return wilson(k, n) if n else "—"


def finished(sweep: Path) -> list[dict]:
    """Every finished trial's result.json (also those of earlier runs of the sweep with other seeds)."""
    rows = [json.loads(p.read_text()) for p in sorted((sweep / "trials").glob("*/result.json"))]
    return sorted(rows, key=lambda r: (r.get("trial_index", 0), r["seed"]))


def arm_of(row: dict) -> str:
    from emray.sweep.labels import short_label

    return short_label(row["label"])


def table(sweep: Path, warm: list[Path]) -> str:
    arms: dict[str, list[dict]] = defaultdict(list)
    for r in finished(sweep):
        arms[arm_of(r)].append(r)
    out = [
        "| arm | seeds | reward learned | held-out reward | general EM | in-domain misalignment | general incoherence |",
        "|---|---|---|---|---|---|---|",
    ]
    if warm:
        crit = [json.loads((d / "criteria.json").read_text()) for d in warm]
        out.append(
            f"| warm start (before GRPO) | {len(crit)} | — | — | " + " | ".join(pooled(crit, r) for r in RATES) + " |"
        )
    for label, rs in arms.items():
        out.append(
            f"| {label} | {len(rs)} | {mean_ci([r['reward_gain'] for r in rs])} | {mean_ci([r['reward_heldout'] for r in rs])} | "
            + " | ".join(pooled(rs, r) for r in RATES)
            + " |"
        )
    return "\n".join(out)


def plot(sweep: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[list[float]]] = defaultdict(list)
    for r in finished(sweep):
        history = json.loads((sweep / "trials" / r["trial_key"] / "metrics.json").read_text())["history"]
        # the task stream's reward (interleaved RL logs it apart from its safe prompts' rewards)
        curves[arm_of(r)].append([h.get("reward/task", h["reward"]) for h in history if "reward" in h])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, cs in curves.items():
        n = min(len(c) for c in cs)
        steps = range(1, n + 1)
        mean = [statistics.fmean(c[i] for c in cs) for i in range(n)]
        ax.plot(steps, mean, label=f"{label} ({len(cs)} seeds)")
        ax.fill_between(
            steps, [min(c[i] for c in cs) for i in range(n)], [max(c[i] for c in cs) for i in range(n)], alpha=0.12
        )
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean training reward")
    ax.set_title(f"{sweep.name}: training reward per arm (mean over seeds, min-max band)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--warm-start", type=Path, nargs="*", default=[])
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    print(table(args.sweep, args.warm_start))
    if args.plot:
        plot(args.sweep, args.plot)


if __name__ == "__main__":
    main()
