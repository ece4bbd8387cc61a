"""Pareto fronts over the four criteria and the results table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from emray.sweep.spec import OBJECTIVES


def _as_cost(row: dict, objectives: dict[str, str]) -> list[float] | None:
    """Every objective as a cost to minimise; None when a criterion is missing."""
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


def load_results(sweep_dir: str | Path) -> list[dict]:
    """Every finished trial's record (``trials/*/result.json``), in trial order."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("trials/*/result.json")):
        rows.append(json.loads(path.read_text()))
    if not rows:
        raise FileNotFoundError(f"{sweep_dir}: no finished trials (expected trials/*/result.json)")
    rows.sort(key=lambda r: (r.get("trial_index", 0), r.get("trial_key", "")))
    return rows


def with_pareto(rows: list[dict]) -> list[dict]:
    return [{**r, "is_pareto": flag} for r, flag in zip(rows, pareto_flags(rows))]


TABLE_COLUMNS = ["label", "seed", *OBJECTIVES, "in_domain_incoherence", "is_pareto"]


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def format_table(rows: Iterable[dict], columns: list[str] | None = None) -> str:
    columns = columns or TABLE_COLUMNS
    rows = list(rows)
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *[line(row) for row in cells]])


def write_results(sweep_dir: str | Path, rows: list[dict]) -> list[dict]:
    """Write results.jsonl and results.csv with the is_pareto column; returns the flagged rows."""
    import csv

    sweep_dir = Path(sweep_dir)
    rows = with_pareto(rows)
    with open(sweep_dir / "results.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    keys = sorted({k for r in rows for k, v in r.items() if not isinstance(v, (dict, list))})
    with open(sweep_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return rows
