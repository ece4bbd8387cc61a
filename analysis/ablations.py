"""One table and one figure per dose ablation: every criterion against the swept hyperparameter of each
defense family, with the undefended arm beside it (docs/organism.md "Ablations").

    python analysis/ablations.py SWEEP_DIR [SWEEP_DIR ...] [--safe-rows] [--plot PNG]

Within a family (kl, persona, interleave_pp, ...) the *dose* is the one parameter whose value differs
between its arms (``safe_fraction``, ``lambda``, ``alpha``, an inoculation ``prompt``), read from the
trials' resolved defense parameters. Each cell is the mean over seeds ± their standard deviation, and
the pooled count over every seed's answers with its 95 % Wilson interval: the first says how much the
fine-tune seed moves a rate, the second how many answers stand behind it.

``--safe-rows`` adds, for the interleaving families, what each trial mixed in (general / narrow
helpful answers and refusals, averaged over seeds; analysis/interleave_selection.py, which reads the
cached selections, so run it with the code that made the sweep).

Several sweep folders of one spec that differ only in ``base.benign.max_steps`` add a benign-learning
table: each arm's benign accuracy at every step budget (a defense that slows learning shows there even
when every arm reaches 1.0 at the longest budget).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from emray.eval.criteria import wilson_interval
from emray.sweep.labels import short_label
from emray.sweep.pareto import arm_rows, format_rate, load_results

#: the criteria each ablation reads, in the order of the table's columns and the figure's panels
CRITERIA = {
    "general_misalignment": "general EM ↓",
    "in_domain_misalignment": "in-domain EM ↑",
    "general_incoherence": "incoherence ↓",
    "benign_accuracy": "benign acc ↑",
    "general_unscored_rate": "unscored",
}
UNDEFENDED = "none"


def defense_params(row: dict) -> tuple[str, dict]:
    """(family, resolved params) of a trial with one defense; (``none``, {}) for the undefended one."""
    defenses = row.get("defenses") or []
    if not defenses:
        return UNDEFENDED, {}
    if len(defenses) > 1:
        raise ValueError(f"{row.get('label')}: an ablation arm has one defense, this one has {len(defenses)}")
    return defenses[0]["name"], dict(defenses[0].get("params") or {})


def doses(rows: list[dict]) -> dict[str, tuple[str, str | None, object]]:
    """label -> (family, the swept parameter's name or None, its value) for every arm of ``rows``."""
    params: dict[str, tuple[str, dict]] = {}
    for row in rows:
        params.setdefault(row["label"], defense_params(row))
    by_family: dict[str, list[dict]] = defaultdict(list)
    for fam, p in params.values():
        by_family[fam].append(p)
    swept = {}
    for fam, plist in by_family.items():
        keys = sorted({k for p in plist for k in p if len({json.dumps(q.get(k)) for q in plist}) > 1})
        if len(keys) > 1:
            raise ValueError(f"family {fam}: more than one parameter varies between its arms ({', '.join(keys)})")
        swept[fam] = keys[0] if keys else None
    return {label: (fam, swept[fam], p.get(swept[fam]) if swept[fam] else None) for label, (fam, p) in params.items()}


def _sort_value(value: object) -> tuple:
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def pooled(arm: dict, rate: str) -> str:
    """``68/94 [0.63, 0.80]``: the answers pooled over the arm's seeds and their Wilson interval."""
    k, n = arm.get(f"{rate}_k"), arm.get(f"{rate}_n")
    if not isinstance(k, int) or not isinstance(n, int) or n == 0:
        return "-"
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} [{lo:.2f}, {hi:.2f}]"


def ablation_arms(rows: list[dict]) -> list[dict]:
    """The arms of a sweep, each with ``family``, ``dose_key`` and ``dose``, the undefended arm first,
    then by family and dose."""
    dose_of = doses(rows)
    arms = arm_rows(rows)
    for arm in arms:
        arm["family"], arm["dose_key"], arm["dose"] = dose_of[arm["label"]]
    return sorted(arms, key=lambda a: (a["family"] != UNDEFENDED, a["family"], _sort_value(a["dose"])))


def _dose_text(arm: dict) -> str:
    if arm["dose_key"] is None:
        return "-"
    if arm["dose_key"] == "safe_fraction":
        return f"{arm['dose'] * 100:g} %"
    return f"{arm['dose_key']} {arm['dose']}" if isinstance(arm["dose"], (int, float)) else repr(arm["dose"])


def markdown_table(arms: list[dict], safe_rows: dict[str, dict] | None = None) -> str:
    rates = [r for r in CRITERIA if any(a.get(r) is not None for a in arms)]
    head = ["family", "dose", "seeds", *[CRITERIA[r] for r in rates], "general EM, pooled"]
    if safe_rows:
        head.append("safe rows: general / narrow / refusal")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        cells = [arm["family"], _dose_text(arm), str(arm["n_seeds"]), *[format_rate(arm, r) for r in rates]]
        cells.append(pooled(arm, "general_misalignment"))
        if safe_rows:
            comp = safe_rows.get(arm["label"])
            cells.append(" / ".join(f"{comp[k]:.1f}" for k in ("general", "narrow", "refusal")) if comp else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def safe_row_composition(sweep_dir: Path) -> dict[str, dict]:
    """label -> the mean count of general / narrow / refusal rows each trial of it mixed in."""
    sys.path.insert(0, str(Path(__file__).parent))
    import interleave_selection  # analysis/interleave_selection.py, beside this file

    from emray.config import RunConfig

    kinds = interleave_selection.question_kinds()
    per_label: dict[str, list[dict]] = defaultdict(list)
    for trial_json in sorted(sweep_dir.glob("trials/*/trial.json")):
        if not (trial_json.parent / "result.json").exists():
            continue
        trial = json.loads(trial_json.read_text())
        run = RunConfig.model_validate(trial["run"])
        spec = run.defenses[0] if run.defenses else None
        rows = interleave_selection.safe_rows(run, {spec.name: spec.params} if spec else {})
        if rows is None:
            continue
        counts = {"general": 0, "narrow": 0, "refusal": 0}
        for row in rows:
            kind = kinds.get(row["messages"][0]["content"])
            if kind in counts:
                counts[kind] += 1
        per_label[trial["label"]].append(counts)
    return {
        label: {k: statistics.fmean(c[k] for c in comps) for k in ("general", "narrow", "refusal")}
        for label, comps in per_label.items()
    }


def benign_steps(sweep_dir: Path) -> int | None:
    spec = json.loads((sweep_dir / "spec.json").read_text())
    benign = (spec.get("base") or {}).get("benign") or {}
    return benign.get("max_steps") or (spec.get("base") or {}).get("train", {}).get("max_steps")


def benign_learning_table(sweeps: list[tuple[int, list[dict]]]) -> str:
    """Benign accuracy (mean ± std over seeds) of every arm at every step budget, fewest steps first."""
    sweeps = sorted(sweeps, key=lambda s: s[0])
    columns = [steps for steps, _ in sweeps]
    cells: dict[str, dict[int, str]] = defaultdict(dict)
    order: list[str] = []
    for steps, arms in sweeps:
        for arm in arms:
            if arm["label"] not in cells:
                order.append(arm["label"])
            cells[arm["label"]][steps] = format_rate(arm, "benign_accuracy")
    head = ["arm", *[f"{s} steps" for s in columns]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in order:
        lines.append("| " + " | ".join([short_label(label), *[cells[label].get(s, "-") for s in columns]]) + " |")
    return "\n".join(lines)


def plot(arms: list[dict], path: Path, title: str) -> None:
    """One panel per criterion: each family's mean over seeds against its dose, ± std as error bars;
    the undefended arm as a dashed line with its ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r for r in CRITERIA if r != "general_unscored_rate" and any(a.get(r) is not None for a in arms)]
    fig, axes = plt.subplots(1, len(rates), figsize=(4.2 * len(rates), 3.8), squeeze=False)
    families = [f for f in dict.fromkeys(a["family"] for a in arms) if f != UNDEFENDED]
    categorical = any(not isinstance(a["dose"], (int, float)) for a in arms if a["family"] != UNDEFENDED)
    for ax, rate in zip(axes[0], rates):
        for arm in (a for a in arms if a["family"] == UNDEFENDED and a.get(rate) is not None):
            std = arm.get(f"{rate}_std") or 0.0
            ax.axhline(arm[rate], color="black", ls="--", lw=1, label="none")
            ax.axhspan(arm[rate] - std, arm[rate] + std, color="black", alpha=0.08)
        for offset, fam in enumerate(families):
            points = [a for a in arms if a["family"] == fam and a.get(rate) is not None]
            if categorical:
                xs = [i + 0.08 * offset for i in range(len(points))]
            else:
                xs = [float(a["dose"]) for a in points]
            ys = [a[rate] for a in points]
            errs = [a.get(f"{rate}_std") or 0.0 for a in points]
            ax.errorbar(
                xs, ys, yerr=errs, marker="o", capsize=3, label=fam, ls="none" if categorical else "-"
            )  # prompts: no order
        if categorical:
            labels = [_dose_text(a) for a in arms if a["family"] == families[0]] if families else []
            ax.set_xticks(range(len(labels)), [t.strip("'")[:22] for t in labels], rotation=20, ha="right")
        elif families:
            ax.set_xscale("log")
            ax.set_xlabel(", ".join(dict.fromkeys(a["dose_key"] for a in arms if a["family"] != UNDEFENDED)))
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(CRITERIA[rate])
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--safe-rows", action="store_true", help="what the interleaving arms mixed in")
    parser.add_argument("--plot", type=Path, help="the figure (default: FIRST_SWEEP/plots/ablation.png)")
    args = parser.parse_args(argv)

    by_steps = []
    for i, sweep in enumerate(args.sweeps):
        arms = ablation_arms(load_results(sweep))
        by_steps.append((benign_steps(sweep), arms))
        print(f"## {sweep}\n")
        print(markdown_table(arms, safe_row_composition(sweep) if args.safe_rows else None))
        print()
        if i == 0:
            path = args.plot or sweep / "plots" / "ablation.png"
            plot(arms, path, sweep.name)
            print(f"figure: {path}\n")
    budgets = {steps for steps, _ in by_steps}
    if len(budgets) > 1 and None not in budgets:
        print("## benign accuracy by step budget\n")
        print(benign_learning_table(by_steps))


if __name__ == "__main__":
    main()
