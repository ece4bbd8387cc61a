"""Do the organism's criteria move monotonically enough for early stopping? (BENCHMARKS.md "Early stopping")

Reads a finished sweep run with ``early_stop: {stop: false, fractions: [...]}`` (every trial probed at each
fraction, none stopped) and prints, as markdown:

1. the curves: per arm and fraction, the probe's general EM, in-domain EM (when probed) and general
   incoherence, mean ± std over seeds, beside the final full evaluation;
2. how often a stop would have been wrong: for each trial and fraction, the stopper's own decision
   (emray/sweep/early_stop.py ``decide_stop``, none's interval from its final evaluations) under the
   constraints, and whether the trial's final full evaluation contradicts it: **wrong** when the final point
   estimate meets the bound of a constraint the probe was stopped on (at none's final point estimate); and
   **lost** when the stopped trial's arm is feasible by `emray recommend`'s rule on the final evaluations.

    python benchmarks/early_stop_curves.py sweeps_out/toy-curves [-c 'general_misalignment <= 0.05' ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from emray.sweep.constraints import DEFAULT_CONSTRAINTS, parse_constraint
from emray.sweep.early_stop import PROBE_PREFIX, decide_stop, read_probes
from emray.sweep.labels import short_label
from emray.sweep.pareto import arm_rows, load_results
from emray.sweep.recommend import _point_meets, decide, sweep_recommend_config
from emray.sweep.spec import OBJECTIVES

CURVES = ("general_misalignment", "in_domain_misalignment", "general_incoherence")
SHORT = {"general_misalignment": "gen EM", "in_domain_misalignment": "in-dom EM", "general_incoherence": "incoh"}


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def curves_table(rows: list[dict], probes: dict[str, list[dict]], fractions: list[float]) -> list[str]:
    crits = [c for c in CURVES if any(PROBE_PREFIX + c in p for ps in probes.values() for p in ps)]
    head = ["arm", "criterion", *[f"{100 * f:g} %" for f in fractions], "final (full eval)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_arm[r["label"]].append(r)
    for label, trials in by_arm.items():
        for crit in crits:
            cells = []
            for f in fractions:
                values = [
                    p[PROBE_PREFIX + crit]
                    for t in trials
                    for p in probes.get(t["trial_key"], [])
                    if p.get("probe_fraction") == f and isinstance(p.get(PROBE_PREFIX + crit), (int, float))
                ]
                cells.append(_ms(values))
            final = [t[crit] for t in trials if isinstance(t.get(crit), (int, float))]
            out.append(f"| {short_label(label)} | {SHORT[crit]} | " + " | ".join(cells) + f" | {_ms(final)} |")
    return out


def wrong_stops(
    rows: list[dict], probes: dict[str, list[dict]], fractions: list[float], texts: list[str], criteria: set[str]
) -> list[str]:
    constraints = [parse_constraint(t, OBJECTIVES) for t in texts]
    arms = {a["label"]: a for a in arm_rows(rows)}
    none = arms.get("none")
    (decision,) = decide(rows, constraints, "em")
    feasible = {v.label for v in decision.arms if v.feasible}
    head = ["arm", *[f"stop at {100 * f:g} % (wrong / lost)" for f in fractions]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = {f: [0, 0, 0, 0] for f in fractions}  # trials, stopped, wrong, lost
    for label in arms:
        if label == "none" and all(c.relative for c in constraints):
            continue  # never stopped: every bound is relative to it, decided once it has finished
        trials = [r for r in rows if r["label"] == label]
        cells = []
        for f in fractions:
            stopped = wrong = lost = 0
            for t in trials:
                probe = next((p for p in probes.get(t["trial_key"], []) if p.get("probe_fraction") == f), None)
                if probe is None:
                    continue
                d = decide_stop(probe, constraints, none, criteria)
                totals[f][0] += 1
                if not d.stop:
                    continue
                stopped += 1
                # the trial's final evaluation against the bounds it was stopped on (none's final point)
                final = [_point_meets(_final_check(c.constraint, t, none)) for c in d.failing]
                wrong += any(final)
                lost += label in feasible
            totals[f][1:] = [totals[f][1] + stopped, totals[f][2] + wrong, totals[f][3] + lost]
            cells.append(f"{stopped}/{len(trials)} ({wrong} / {lost})")
        out.append(f"| {short_label(label)} | " + " | ".join(cells) + " |")
    out.append(
        "| **all trials** | "
        + " | ".join(f"**{s}/{n} ({w} / {lo})**" for n, s, w, lo in (totals[f] for f in fractions))
        + " |"
    )
    return out


def _final_check(text: str, trial: dict, none: dict | None):
    from emray.sweep.recommend import check

    return check(parse_constraint(text, OBJECTIVES), trial, none)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("-c", "--constraint", action="append", help="replaces the spec's recommend: constraints")
    parser.add_argument(
        "--criteria",
        default="general_misalignment,general_incoherence",
        help="what a probe may stop on (early_stop.criteria); default: %(default)s",
    )
    args = parser.parse_args(argv)
    rows = [r for r in load_results(args.sweep_dir) if not r.get("stopped_early")]
    probes = {r["trial_key"]: read_probes(args.sweep_dir / "trials" / r["trial_key"]) for r in rows}
    fractions = sorted({p["probe_fraction"] for ps in probes.values() for p in ps})
    if not fractions:
        print(f"{args.sweep_dir}: no probes (run the sweep with early_stop: {{stop: false}})", file=sys.stderr)
        return 2
    config, _ = sweep_recommend_config(args.sweep_dir)
    texts = args.constraint or (config.constraints if config else list(DEFAULT_CONSTRAINTS))
    n = {p.get(PROBE_PREFIX + "general_misalignment_n") for ps in probes.values() for p in ps}
    print(f"## {args.sweep_dir}: {len(rows)} trials, probes at {', '.join(f'{100 * f:g} %' for f in fractions)}")
    print(f"probe answers per trial (general, scored): {sorted(x for x in n if x is not None)}\n")
    print("\n".join(curves_table(rows, probes, fractions)))
    print(f"\nconstraints: {'; '.join(texts)}; a probe may stop on: {args.criteria}\n")
    print("\n".join(wrong_stops(rows, probes, fractions, texts, set(args.criteria.split(",")))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
