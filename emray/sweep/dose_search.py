"""Adaptive dose search (``search.algorithm: dose_search``): per defense family, find the dose the
recommendation wants by bisection over the family's dose ladder instead of running the whole grid.

A provider's constraints (the spec's ``recommend:`` section, emray/sweep/constraints.py) split in two:

- *protective*: on general misalignment, which a stronger dose improves;
- *retention*: the others (the narrow behaviour, benign learning, coherence), which a stronger dose does
  not improve.

Under that monotone assumption the doses that meet every constraint form one interval of the ladder,
[L, U]: L is the smallest dose meeting the protective constraints, U the largest meeting the retention
ones. Both are found by bisection on **one seed** (the spec's first: the probe), point estimates against
the bound (none's value from its own probe seed); a family whose L fails retention has no feasible dose.
The dose the objective wants (``em``, ``margin``: U, the lowest misalignment still keeping the rest;
``overhead``: L, the least intervention) is then run on every other seed, so the recommendation is made on
all seeds like a grid's. The undefended arm runs on every seed first (relative bounds need it).

Every decision is a pure function of the results so far, so a resumed search re-asks for the same trials,
which are finished and report at once (emray/sweep/runner.py skips a trial with a result.json): resuming
needs no searcher state. ``dose_search.json`` in the sweep folder records each family's probes, L, U,
the chosen dose and why.

What it gives up against the grid: a dose between probes is never measured; a criterion that is not
monotone in the dose (persona steering's coherence) can make the bisection miss a feasible dose; a probe
is one seed, so a noisy seed can move L or U by one step (the chosen dose is then checked on every seed by
the recommendation's confidence rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emray.sweep.constraints import Constraint, parse_constraint
from emray.sweep.spec import OBJECTIVES, SweepSpec, Trial

#: criteria a stronger dose improves (the protective side of the constraints); every other is retention
PROTECTIVE = frozenset({"general_misalignment"})
NONE = "none"


@dataclass
class Ladder:
    """One defense family's doses in increasing order, each with its trial keys in the spec's seed order."""

    family: str
    dose_key: str | None
    doses: list[Any]
    keys: list[list[str]]

    def probe(self, i: int) -> str:
        return self.keys[i][0]


@dataclass
class Outcome:
    """Where a family's search stands: the trial keys it needs next, or its answer."""

    need: list[str] = field(default_factory=list)
    lower: int | None = None  # L, once known
    upper: int | None = None  # U, once known
    chosen: int | None = None
    reason: str = ""
    done: bool = False


def _family_params(trial: Trial) -> tuple[str, dict]:
    if not trial.run.defenses:
        return NONE, {}
    spec = trial.run.defenses[0]
    return spec.name, spec.params.model_dump(mode="json", by_alias=True)


def ladders(spec: SweepSpec, trials: list[Trial]) -> tuple[list[str], list[Ladder]]:
    """(the undefended arm's keys, one ladder per family), from the planned grid of a dose_search spec
    (emray/sweep/spec.py has checked that each entry is one defense with at most one list of doses)."""
    seeds = list(spec.search.seeds)
    none_by_seed: dict[int, str] = {}
    by_family: dict[str, dict[str, Any]] = {}
    for trial in trials:
        family, params = _family_params(trial)
        if family == NONE:
            none_by_seed[trial.run.seed] = trial.key
            continue
        entry = by_family.setdefault(family, {"params": [], "keys": {}})
        entry["params"].append(params)
        entry["keys"].setdefault(json.dumps(params, sort_keys=True), {})[trial.run.seed] = trial.key
    out = []
    for family, entry in by_family.items():
        plist = entry["params"]
        varying = sorted({k for p in plist for k in p if len({json.dumps(q.get(k)) for q in plist}) > 1})
        dose_key = varying[0] if varying else None
        arms = sorted(entry["keys"].items(), key=lambda kv: json.loads(kv[0]).get(dose_key) if dose_key else 0)
        out.append(
            Ladder(
                family=family,
                dose_key=dose_key,
                doses=[json.loads(p).get(dose_key) if dose_key else None for p, _ in arms],
                keys=[[by_seed[s] for s in seeds] for _, by_seed in arms],
            )
        )
    return [none_by_seed[s] for s in seeds if s in none_by_seed], out


def meets(constraint: Constraint, result: dict, none: dict) -> bool | None:
    """A probe against one constraint on point estimates; None when the probe lacks the criterion. A trial
    stopped early (emray/sweep/early_stop.py) fails the constraints it was stopped on and has no value for
    the others."""
    if result.get("stopped_early"):
        return False if constraint.canonical() in result.get("stop_constraints", []) else None
    value = result.get(constraint.criterion)
    if not isinstance(value, (int, float)):
        return None
    bound = constraint.threshold(none.get(constraint.criterion) if constraint.relative else None)
    return value <= bound if constraint.op == "<=" else value >= bound


def side_ok(constraints: list[Constraint], result: dict, none: dict) -> bool:
    """Every constraint of one side met (a criterion the probe lacks does not count against it)."""
    return all(meets(c, result, none) is not False for c in constraints)


def search_family(
    ladder: Ladder, results: dict[str, dict], none: dict, constraints: list[Constraint], objective: str
) -> Outcome:
    """The family's next trials or its answer, from the results so far (bisection for L, then U)."""
    protective = [c for c in constraints if c.criterion in PROTECTIVE]
    retention = [c for c in constraints if c.criterion not in PROTECTIVE]
    n = len(ladder.doses)
    lo, hi = 0, n  # L in [lo, hi]; hi == n: no dose protects
    while lo < hi:
        mid = (lo + hi) // 2
        result = results.get(ladder.probe(mid))
        if result is None:
            return Outcome(need=[ladder.probe(mid)])
        if side_ok(protective, result, none):
            hi = mid
        else:
            lo = mid + 1
    if lo == n:
        return Outcome(lower=None, done=True, reason="no dose meets the protective constraints on the probe seed")
    lower = lo
    if not side_ok(retention, results[ladder.probe(lower)], none):
        return Outcome(
            lower=lower, done=True, reason="the smallest protective dose already fails a retention constraint"
        )
    lo, hi = lower, n - 1  # U in [lo, hi]: the largest dose that keeps the retention constraints
    if objective != "overhead":
        while lo < hi:
            mid = (lo + hi + 1) // 2
            result = results.get(ladder.probe(mid))
            if result is None:
                return Outcome(need=[ladder.probe(mid)], lower=lower)
            if side_ok(retention, result, none):
                lo = mid
            else:
                hi = mid - 1
    upper = lo
    chosen = lower if objective == "overhead" else upper
    missing = [k for k in ladder.keys[chosen][1:] if k not in results]
    return Outcome(
        need=missing,
        lower=lower,
        upper=upper if objective != "overhead" else None,
        chosen=chosen,
        done=not missing,
        reason="feasible on the probe seed; run on every seed",
    )


class DoseSearch:
    """The whole search: the undefended arm on every seed, then every family's bisection."""

    def __init__(self, spec: SweepSpec, trials: list[Trial]):
        recommend = spec.recommend
        texts = recommend.constraints if recommend else None
        from emray.sweep.constraints import DEFAULT_CONSTRAINTS

        self.constraints = [parse_constraint(t, OBJECTIVES) for t in (texts or DEFAULT_CONSTRAINTS)]
        self.objective = recommend.objective if recommend else "em"
        self.none_keys, self.ladders = ladders(spec, trials)
        if not self.none_keys:
            raise ValueError("search.algorithm dose_search needs the undefended arm 'none' in search.defense")
        self.results: dict[str, dict] = {}
        self.failed: set[str] = set()

    def outcomes(self) -> dict[str, Outcome]:
        none = self.results.get(self.none_keys[0])
        out = {}
        for ladder in self.ladders:
            if none is None:
                out[ladder.family] = Outcome()  # waits for the undefended probe
                continue
            outcome = search_family(ladder, self.results, none, self.constraints, self.objective)
            if any(k in self.failed for k in outcome.need):
                outcome = Outcome(
                    done=True, reason=f"a trial failed: {', '.join(k for k in outcome.need if k in self.failed)}"
                )
            out[ladder.family] = outcome
        return out

    def needed(self) -> list[str]:
        """Every trial key the search needs now, the undefended arm first."""
        keys = [k for k in self.none_keys if k not in self.results and k not in self.failed]
        for outcome in self.outcomes().values():
            keys += [k for k in outcome.need if k not in keys]
        return keys

    def finished(self) -> bool:
        return not [k for k in self.none_keys if k not in self.results and k not in self.failed] and all(
            o.done for o in self.outcomes().values()
        )

    def chosen_keys(self) -> set[str]:
        """The trials the recommendation reads: the undefended arm and each family's chosen dose."""
        keys = set(self.none_keys)
        for ladder in self.ladders:
            outcome = self.outcomes()[ladder.family]
            if outcome.chosen is not None:
                keys.update(ladder.keys[outcome.chosen])
        return keys

    def report(self) -> dict:
        """What ``dose_search.json`` holds: per family the probes, L, U, the chosen dose and why."""
        outcomes = self.outcomes()
        families = []
        for ladder in self.ladders:
            o = outcomes[ladder.family]
            probes = [
                {"dose": d, "key": ladder.probe(i), **{c: self.results[ladder.probe(i)].get(c) for c in OBJECTIVES}}
                for i, d in enumerate(ladder.doses)
                if ladder.probe(i) in self.results
            ]
            families.append(
                {
                    "family": ladder.family,
                    "dose_key": ladder.dose_key,
                    "ladder": ladder.doses,
                    "probes": probes,
                    "lower": None if o.lower is None else ladder.doses[o.lower],
                    "upper": None if o.upper is None else ladder.doses[o.upper],
                    "chosen": None if o.chosen is None else ladder.doses[o.chosen],
                    "done": o.done,
                    "reason": o.reason,
                }
            )
        planned = len(self.none_keys) + sum(len(k) for ladder in self.ladders for k in ladder.keys)
        return {
            "constraints": [c.text for c in self.constraints],
            "objective": self.objective,
            "trials_run": len(self.results),
            "trials_in_grid": planned,
            "families": families,
        }

    def write_report(self, sweep_dir: Path) -> None:
        (sweep_dir / "dose_search.json").write_text(json.dumps(self.report(), indent=2))


def make_searcher(search: DoseSearch, sweep_dir: Path):
    """Ray Tune's Searcher over ``search``: it proposes ``{"trial_key": ...}`` configs, which the sweep's
    trainable runs like a grid trial, and says FINISHED once every family has its answer."""
    from ray.tune.search import Searcher

    from emray.sweep.pareto import read_result

    class DoseSearcher(Searcher):
        def __init__(self):
            super().__init__()
            self.running: dict[str, str] = {}

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True  # the constraints, not one metric, drive it

        def suggest(self, trial_id: str):
            busy = set(self.running.values())
            for key in search.needed():
                if key not in busy:
                    self.running[trial_id] = key
                    return {"trial_key": key}
            return Searcher.FINISHED if not self.running and search.finished() else None

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            key = self.running.pop(trial_id, None)
            if key is None:
                return
            # the trial's result.json when there is one: an early-stopped trial's last Tune result is its probe
            record = read_result(sweep_dir / "trials" / key / "result.json")
            if record is None and (error or not result):
                search.failed.add(key)
            else:
                search.results[key] = record or result
            search.write_report(sweep_dir)

    return DoseSearcher()
