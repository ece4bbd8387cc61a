"""Pareto fronts over the four criteria, per-arm summaries over seeds, and the results tables.

An *arm* is one point of the search (a model and a defense with its hyperparameters); its trials
differ only by seed. The front is computed on arm means: a lucky seed does not put an arm on it.
Each arm's rate carries one 95 % interval, said by ``<rate>_interval``:

- ``std``: with two or more seeds, mean ± the sample standard deviation over seeds (``<rate>_std``);
  ``<rate>_lo``/``_hi`` are mean ± std, clipped to [0, 1];
- ``wilson``: with one seed, the Wilson score interval over that trial's answers (emray/eval/criteria.py).

``<rate>_k``/``_n`` are the answer counts pooled over the arm's seeds either way.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

from emray.sweep.cost import add_overheads, arm_cost, sweep_cost
from emray.sweep.labels import family, short_label
from emray.sweep.spec import OBJECTIVES

#: RL trials' task criteria (emray/rl/criteria.py): summarised per arm and shown beside the four criteria;
#: the front stays on the four (under RL the narrow one, in-domain misalignment, is what the task rewards)
RL_CRITERIA = {"reward_heldout": "task reward (held-out) ↑", "reward_gain": "reward gain (training)"}
#: the share of answers the judge left unscored (REFUSAL / CODE): out of every rate's denominator, so
#: reported beside the rates (emray/eval/criteria.py)
UNSCORED = ["general_unscored_rate", "in_domain_unscored_rate"]
#: the rates summarised per arm: the four criteria and in-domain incoherence (reported in the paper), the
#: unscored shares, and the RL criteria when the trials have them
RATES = [*OBJECTIVES, "in_domain_incoherence", *UNSCORED, *RL_CRITERIA]


def _as_cost(row: dict, objectives: dict[str, str]) -> list[float] | None:
    """Every objective as a cost to minimise; None when a criterion is missing or a trial of the arm was
    stopped early (confidently infeasible: never on the front, whatever its other seeds scored)."""
    if row.get("n_stopped") or row.get("stopped_early"):
        return None
    costs = []
    for key, mode in objectives.items():
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        costs.append(value if mode == "min" else -value)
    return costs


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_flags(rows: list[dict], objectives: dict[str, str] | None = None) -> list[bool]:
    """``is_pareto`` for each row: no other row is at least as good on every criterion and better on one.

    Objectives a row lacks entirely (e.g. no benign task in the sweep) are dropped for every row;
    a row missing a criterion the others have is never on the front.
    """
    objectives = dict(objectives or OBJECTIVES)
    for key in list(objectives):
        if all(r.get(key) is None for r in rows):
            del objectives[key]
    costs = [_as_cost(r, objectives) for r in rows]
    flags = []
    for i, ci in enumerate(costs):
        if ci is None:
            flags.append(False)
            continue
        flags.append(not any(cj is not None and dominates(cj, ci) for j, cj in enumerate(costs) if j != i))
    return flags


def read_result(path: Path, set_aside: bool = False) -> dict | None:
    """A trial's ``result.json``, or None when it is absent or corrupt. A corrupt one (not UTF-8 JSON
    of an object: a full disk, an edit gone wrong) is reported, naming the file; ``set_aside`` (the
    sweep) moves it to ``result.json.corrupt`` so its trial counts as not finished and runs again."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(data.decode("utf-8"))
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        return record
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if set_aside:
            keep = path.with_name(path.name + ".corrupt")
            path.replace(keep)
            what = f"moved to {keep.name}; the trial runs again"
        else:
            what = "skipped; `emray sweep SPEC --resume` runs that trial again"
        print(f"[emray] {path}: corrupt trial result ({err}); {what}", file=sys.stderr, flush=True)
        return None


def load_results(sweep_dir: str | Path) -> list[dict]:
    """Every finished trial's record (``trials/*/result.json``), in trial order.

    A sweep folder keeps the trials of earlier runs whose identity has since changed (a new emray
    version adds a defense parameter, an edited base setting): of the records for one model, arm and
    seed only the newest counts, so an arm never shows twice its seeds.
    """
    newest: dict[tuple, tuple[float, dict]] = {}
    paths = []
    for path in sorted(Path(sweep_dir).glob("trials/*/result.json")):
        row = read_result(path)
        if row is None:
            continue
        paths.append(path)
        slot = (row.get("model", ""), row.get("label", ""), row.get("seed"))
        mtime = path.stat().st_mtime
        if slot not in newest or mtime > newest[slot][0]:
            newest[slot] = (mtime, row)
    if not newest:
        raise FileNotFoundError(f"{sweep_dir}: no finished trials (expected trials/*/result.json)")
    if len(paths) > len(newest):
        print(
            f"[emray] {sweep_dir}: {len(paths) - len(newest)} superseded trial(s) ignored "
            "(an older run of the same arm and seed)",
            file=sys.stderr,
        )
    rows = [row for _, row in newest.values()]
    rows.sort(key=lambda r: (r.get("trial_index", 0), r.get("trial_key", "")))
    return rows


def arm_key(row: dict) -> tuple[str, str]:
    return (row.get("model", ""), row.get("label", ""))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def summarize_arm(trials: list[dict]) -> dict:
    """One arm's row: mean, interval and pooled counts per rate over its trials (seeds). A trial stopped
    early (emray/sweep/early_stop.py) has no final criteria: it counts in ``n_seeds`` and ``n_stopped``,
    its reason in ``stop_reasons``, and in none of the rates."""
    first = trials[0]
    stopped = [t for t in trials if t.get("stopped_early")]
    arm = {
        "label": first.get("label", ""),
        "short_label": short_label(first.get("label", "")),
        "family": family(first.get("label", "")),
        "model": first.get("model", ""),
        "seeds": [t.get("seed") for t in trials],
        "n_seeds": len(trials),
        "trial_keys": [t.get("trial_key") for t in trials],
    }
    if stopped:
        arm.update(
            n_stopped=len(stopped), stop_reasons=[f"seed {t.get('seed')}: {t.get('stop_reason')}" for t in stopped]
        )
        trials = [t for t in trials if not t.get("stopped_early")]
        first = trials[0] if trials else {}
    for rate in RATES:
        values = [t[rate] for t in trials if _number(t.get(rate))]
        if not values:
            arm[rate] = None
            continue
        arm[rate] = statistics.fmean(values)
        ks, ns = [t.get(f"{rate}_k") for t in trials], [t.get(f"{rate}_n") for t in trials]
        if all(isinstance(x, int) for x in ks + ns):
            arm[f"{rate}_k"], arm[f"{rate}_n"] = sum(ks), sum(ns)
        if len(values) >= 2:
            std = statistics.stdev(values)
            floor = -1.0 if rate == "reward_gain" else 0.0  # a gain is a difference of rewards in [0, 1]
            arm.update(
                {
                    f"{rate}_std": std,
                    f"{rate}_interval": "std",
                    f"{rate}_lo": max(floor, arm[rate] - std),
                    f"{rate}_hi": min(1.0, arm[rate] + std),
                }
            )
        elif _number(first.get(f"{rate}_lo")) and _number(first.get(f"{rate}_hi")):
            arm.update(
                {f"{rate}_interval": "wilson", f"{rate}_lo": first[f"{rate}_lo"], f"{rate}_hi": first[f"{rate}_hi"]}
            )
    return arm


def arm_rows(rows: list[dict]) -> list[dict]:
    """Trials grouped into arms (first-seen order), each summarised, with ``is_pareto`` on arm means
    and ``dominated_by``: the short labels of the arms that dominate it."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(arm_key(r), []).append(r)
    # the cost fields (emray/sweep/cost.py): mean and total per arm, overhead against none
    arms = add_overheads([{**summarize_arm(trials), **arm_cost(trials)} for trials in groups.values()])
    for arm, flag, by in zip(arms, pareto_flags(arms), dominators(arms)):
        arm["is_pareto"] = flag
        arm["dominated_by"] = [arms[j]["short_label"] for j in by]
    return arms


def dominators(rows: list[dict], objectives: dict[str, str] | None = None) -> list[list[int]]:
    """For each row, the indices of the rows that dominate it (same rules as ``pareto_flags``)."""
    objectives = dict(objectives or OBJECTIVES)
    for key in list(objectives):
        if all(r.get(key) is None for r in rows):
            del objectives[key]
    costs = [_as_cost(r, objectives) for r in rows]
    return [
        [] if ci is None else [j for j, cj in enumerate(costs) if j != i and cj is not None and dominates(cj, ci)]
        for i, ci in enumerate(costs)
    ]


def with_pareto(rows: list[dict]) -> list[dict]:
    """Each trial flagged ``is_pareto`` when its arm is on the front (computed on arm means)."""
    on_front = {arm_key({"model": a["model"], "label": a["label"]}): a["is_pareto"] for a in arm_rows(rows)}
    return [{**r, "short_label": short_label(r.get("label", "")), "is_pareto": on_front[arm_key(r)]} for r in rows]


TABLE_COLUMNS = ["label", "seed", *OBJECTIVES, "in_domain_incoherence", "general_unscored_rate", "is_pareto"]


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def format_rate(arm: dict, rate: str) -> str:
    """``0.150 ± 0.142`` (std over seeds) or ``0.011 [0.00, 0.06]`` (Wilson over answers) or ``-``."""
    value = arm.get(rate)
    if not _number(value):
        return "-"
    if arm.get(f"{rate}_interval") == "std":
        return f"{value:.3f} ± {arm[f'{rate}_std']:.3f}"
    if arm.get(f"{rate}_interval") == "wilson":
        return f"{value:.3f} [{arm[f'{rate}_lo']:.2f}, {arm[f'{rate}_hi']:.2f}]"  # bounds: 2 decimals, the table fits 120 columns
    return f"{value:.3f}"


SHORT_NAMES = {
    "general_misalignment": "general EM ↓",
    "in_domain_misalignment": "in-domain ↑",
    "benign_accuracy": "benign acc ↑",
    "general_incoherence": "incoherence ↓",
    "in_domain_incoherence": "in-domain incoh.",
    "reward_heldout": "task reward ↑",
    "reward_gain": "reward gain",
    "general_unscored_rate": "unscored",
    "in_domain_unscored_rate": "in-domain unscored",
}


def format_arm_table(arms: list[dict], rates: list[str] | None = None) -> str:
    """The per-arm table the console and ``emray pareto`` print (intervals as in ``format_rate``); the
    general answers' unscored share last, as the rates are over scored answers only."""
    rates = rates or [
        r for r in (*OBJECTIVES, *RL_CRITERIA, "general_unscored_rate") if any(_number(a.get(r)) for a in arms)
    ]
    head = ["arm", "seeds", *[SHORT_NAMES.get(r, r) for r in rates], "front"]
    cells = [
        [
            a["short_label"],
            str(a["n_seeds"]) + (f" ({a['n_stopped']} stopped)" if a.get("n_stopped") else ""),
            *[format_rate(a, r) for r in rates],
            "*" if a["is_pareto"] else ("stopped" if a.get("n_stopped") else ""),
        ]
        for a in arms
    ]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *[line(c) for c in cells]])


def stopped_lines(arms: list[dict]) -> list[str]:
    """One line per trial stopped early, with its reason (emray/sweep/early_stop.py); [] without any."""
    return [f"stopped early: {a['short_label']} {reason}" for a in arms for reason in a.get("stop_reasons") or []]


def interval_note(arms: list[dict]) -> str:
    kinds = {a.get(f"{r}_interval") for a in arms for r in OBJECTIVES} - {None}
    # the table shows a Wilson interval as ``rate [lo, hi]``: the note names that form, in no brackets of its own
    notes = {"std": "± std over seeds", "wilson": "[lo, hi] = 95 % Wilson interval over answers (one seed)"}
    return "; ".join(notes[k] for k in sorted(kinds)) or "no interval (counts missing)"


def format_table(rows: Iterable[dict], columns: list[str] | None = None) -> str:
    columns = columns or TABLE_COLUMNS
    rows = list(rows)
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *[line(row) for row in cells]])


def write_results(sweep_dir: str | Path, rows: list[dict]) -> list[dict]:
    """Write results.jsonl/.csv (one row per trial, ``is_pareto`` from its arm) and arms.jsonl/.csv
    (one row per arm: means, intervals, front, dominators); returns the flagged trial rows."""
    sweep_dir = Path(sweep_dir)
    rows = with_pareto(rows)
    with open(sweep_dir / "results.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    write_csv(sweep_dir / "results.csv", rows)
    arms = arm_rows(rows)
    with open(sweep_dir / "arms.jsonl", "w") as fh:
        for a in arms:
            fh.write(json.dumps(a) + "\n")
    write_csv(sweep_dir / "arms.csv", arms)
    (sweep_dir / "cost.json").write_text(json.dumps(sweep_cost(rows), indent=2))
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    keys = sorted({k for r in rows for k, v in r.items() if not isinstance(v, (dict, list))})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
