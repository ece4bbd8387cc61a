"""Constraints in, a recommended defense and dose out: which arms meet every constraint with confidence,
ranked by an objective; when none does, the closest arm and what it misses by.

The decision rule (docs/recommend.md):

- **An arm's interval** for a criterion is the one ``emray pareto`` shows (emray/sweep/pareto.py: mean ±
  std over seeds with two or more seeds, Wilson over the answers with one), widened to contain the 95 %
  Wilson interval over the answers pooled across its seeds: ``lo`` = the lower of the two lower ends,
  ``hi`` = the higher of the two upper ends. A criterion with neither (a mean over several domains, one
  seed) is judged on its point estimate, and the check says so (``interval: point``).
- **A bound relative to none** (``a * none + b``) takes none's interval end that is harder to meet:
  for ``x >= a * none + b`` (a ≥ 0) none's upper end, for ``x <= a * none + b`` none's lower end.
- **meets** ``x <= c`` when the arm's upper end ``hi <= c``; ``x >= c`` when ``lo >= c`` (both against
  the conservative bound). **fails** when even the arm's favourable end misses the favourable bound
  (confidently infeasible); **uncertain** otherwise. The *margin* is the distance of the arm's
  conservative end past the conservative bound (< 0: how much it misses by).
- **Feasible** = meets every constraint. Feasible arms are ranked by the objective (``em``: lowest general
  misalignment; ``overhead``: lowest train seconds relative to none; ``margin``: largest smallest margin),
  ties broken by the others in the order em, overhead, margin, then the label. With no feasible arm the
  closest is the one with the largest smallest margin.

Everything is per model: a relative bound compares an arm with the ``none`` arm of its own model.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emray.eval.criteria import wilson_interval
from emray.sweep.constraints import DEFAULT_CONSTRAINTS, Constraint, parse_constraint
from emray.sweep.labels import parse_label
from emray.sweep.pareto import arm_rows, load_results
from emray.sweep.spec import OBJECTIVES, RecommendConfig

RULE = (
    "an arm meets a constraint with confidence when its whole 95 % interval (the per-arm interval of "
    "`emray pareto`, widened to the Wilson interval over its pooled answers) is on the allowed side of the "
    "bound; a bound relative to none uses none's interval end that is harder to meet"
)
OBJECTIVE_TEXT = {
    "em": "lowest general misalignment",
    "overhead": "lowest training overhead vs none",
    "margin": "largest smallest margin to a bound",
}
NONE_LABEL = "none"


@dataclass
class Check:
    """One arm against one constraint."""

    constraint: str
    criterion: str
    op: str
    value: float | None  # the arm's point estimate
    lo: float | None  # the arm's interval (widened as the rule says)
    hi: float | None
    interval: str  # "std+wilson", "wilson", "std" or "point"
    bound: float | None  # the conservative bound (none's harder end for a relative constraint)
    point_bound: float | None  # the bound at none's point estimate
    margin: float | None  # conservative end past the conservative bound; < 0 misses by that much
    status: str  # "meets", "uncertain", "fails", "missing"


@dataclass
class ArmVerdict:
    label: str
    short_label: str
    family: str
    dose: dict
    model: str
    n_seeds: int
    values: dict  # criterion -> point estimate
    delta: dict  # criterion -> arm - none (None without none or a value)
    train_seconds: float | None  # accelerator-seconds of its fine-tunes (old records: train_seconds)
    trial_seconds: float | None  # accelerator-seconds of the trial (old records: trial_seconds)
    train_ratio: float | None  # train seconds / none's (same model)
    trial_ratio: float | None
    checks: list[Check]
    feasible: bool = False
    plausible: bool = False  # every point estimate meets its point bound (not necessarily with confidence)
    min_margin: float | None = None
    rank: int | None = None  # 1-based among the feasible
    stopped: list[str] = field(default_factory=list)  # seeds stopped early, with the reason: infeasible


@dataclass
class Decision:
    """The recommendation for one model."""

    model: str
    objective: str
    constraints: list[str]
    arms: list[ArmVerdict]
    recommended: ArmVerdict | None
    closest: ArmVerdict | None  # with no feasible arm
    tied_with: list[str] = field(default_factory=list)  # feasible arms equal to the winner on the objective
    notes: list[str] = field(default_factory=list)
    show_model: bool = False  # the sweep has several models: each line names its own

    @property
    def feasible(self) -> list[ArmVerdict]:
        return sorted((a for a in self.arms if a.feasible), key=lambda a: a.rank)


# --------------------------------------------------------------------------------------- inputs
def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def arm_interval(arm: dict, rate: str) -> tuple[float | None, float | None, str]:
    """(lo, hi, kind): the arm's interval widened to the Wilson interval over its pooled answers."""
    value = arm.get(rate)
    if not _number(value):
        return None, None, "missing"
    los, his, kinds = [], [], []
    if _number(arm.get(f"{rate}_lo")) and _number(arm.get(f"{rate}_hi")):
        los.append(arm[f"{rate}_lo"])
        his.append(arm[f"{rate}_hi"])
        kinds.append(arm.get(f"{rate}_interval") or "interval")
    k, n = arm.get(f"{rate}_k"), arm.get(f"{rate}_n")
    if isinstance(k, int) and isinstance(n, int) and n > 0 and 0 <= k <= n:
        lo, hi = wilson_interval(k, n)
        los.append(lo)
        his.append(hi)
        if "wilson" not in kinds:
            kinds.append("wilson")
    if not los:
        return value, value, "point"
    return min(los), max(his), "+".join(kinds)


def dose(label: str) -> dict:
    """Each defense's hyperparameters from the arm's label: ``{"kl": {"lambda": 0.1}}`` (file paths left out)."""
    out: dict[str, dict] = {}
    for name, params in parse_label(label):
        if name == NONE_LABEL:
            continue
        values: dict = {}
        for key, raw in params:
            if "/" in raw or raw.startswith("organism:"):
                continue
            try:
                values[key] = float(raw)
            except ValueError:
                values[key] = raw
        out[name] = values
    return out


def _mean_seconds(trials: list[dict], key: str) -> float | None:
    values = [t[key] for t in trials if _number(t.get(key))]
    return statistics.fmean(values) if values else None


def _train_cost(trial: dict) -> float | None:
    """Accelerator-seconds of the trial's fine-tunes (emray/sweep/cost.py); a record from before the cost
    fields: its train_seconds (wall, the narrow fine-tune and its evaluation)."""
    if _number(trial.get("cost_train_s")):
        return trial["cost_train_s"] + (trial.get("cost_benign_train_s") or 0.0)
    return trial.get("train_seconds")


def _trial_cost(trial: dict) -> float | None:
    """Accelerator-seconds of the whole trial; a record from before the cost fields: its trial_seconds."""
    return trial["cost_accelerator_s"] if _number(trial.get("cost_accelerator_s")) else trial.get("trial_seconds")


def _mean_cost(trials: list[dict], cost) -> float | None:
    values = [v for v in map(cost, trials) if _number(v)]
    return statistics.fmean(values) if values else None


def resolve_constraints(texts: list[str] | None) -> list[Constraint]:
    return [parse_constraint(t, OBJECTIVES) for t in (texts or DEFAULT_CONSTRAINTS)]


# ---------------------------------------------------------------------------------------- rule
def check(constraint: Constraint, arm: dict, none: dict | None) -> Check:
    """``arm`` (an arms.jsonl row) against ``constraint``, by the rule in this module's docstring."""
    crit = constraint.criterion
    value = arm.get(crit) if _number(arm.get(crit)) else None
    lo, hi, kind = arm_interval(arm, crit)
    bound = point_bound = easy_bound = None
    if constraint.relative:
        n_value = none.get(crit) if none is not None and _number(none.get(crit)) else None
        if n_value is not None:
            n_lo, n_hi, _ = arm_interval(none, crit)
            ends = (constraint.threshold(n_lo), constraint.threshold(n_hi))
            hard, easy = (max, min) if constraint.op == ">=" else (min, max)
            bound, easy_bound, point_bound = hard(ends), easy(ends), constraint.threshold(n_value)
    else:
        bound = point_bound = easy_bound = constraint.offset
    if value is None or bound is None:
        return Check(
            constraint.canonical(), crit, constraint.op, value, lo, hi, kind, bound, point_bound, None, "missing"
        )
    if constraint.op == "<=":
        margin = bound - hi
        fails = lo > easy_bound
    else:
        margin = lo - bound
        fails = hi < easy_bound
    status = "meets" if margin >= 0 else ("fails" if fails else "uncertain")
    return Check(constraint.canonical(), crit, constraint.op, value, lo, hi, kind, bound, point_bound, margin, status)


def _point_meets(c: Check) -> bool:
    if c.value is None or c.point_bound is None:
        return False
    return c.value <= c.point_bound if c.op == "<=" else c.value >= c.point_bound


def _key(objective: str, a: ArmVerdict) -> tuple:
    inf = math.inf
    em = a.values.get("general_misalignment")
    parts = {
        "em": (em if em is not None else inf,),
        "overhead": (a.train_ratio if a.train_ratio is not None else inf,),
        "margin": (-(a.min_margin if a.min_margin is not None else -inf),),
    }
    order = [objective] + [o for o in ("em", "overhead", "margin") if o != objective]
    return tuple(x for o in order for x in parts[o]) + (a.label,)


def _closeness(objective: str, v: ArmVerdict) -> tuple:
    """The infeasible arms' order: the largest smallest margin first, then fewer misses, then the objective."""
    misses = sum(c.status != "meets" for c in v.checks)
    return (bool(v.stopped), -(v.min_margin if v.min_margin is not None else -math.inf), misses, _key(objective, v))


#: criteria every trial's evaluation measures: without a value the judge scored nothing, and a default
#: constraint on them is kept (no arm qualifies) rather than skipped as "not in this sweep"
ALWAYS_MEASURED = frozenset({"general_misalignment"})


def decide(
    rows: list[dict], constraints: list[Constraint], objective: str = "em", defaults: bool = False
) -> list[Decision]:
    """One Decision per model from trial rows (results.jsonl / trials' result.json).

    ``defaults``: the constraints are the built-in defaults, so one on a criterion the sweep does not
    have (no benign task) is dropped with a note instead of refused."""
    arms = arm_rows(rows)
    trials_by_arm: dict[tuple, list[dict]] = {}
    for r in rows:
        trials_by_arm.setdefault((r.get("model", ""), r.get("label", "")), []).append(r)
    decisions = []
    for model in dict.fromkeys(a["model"] for a in arms):
        model_arms = [a for a in arms if a["model"] == model]
        notes, kept = [], []
        for c in constraints:
            if not any(_number(a.get(c.criterion)) for a in model_arms):
                if any(a.get("n_stopped") for a in model_arms):
                    kept.append(c)  # measured, but the trials that had it were stopped before the final evaluation
                    continue
                if c.criterion in ALWAYS_MEASURED:
                    # every evaluation measures it, so no value means no answer was scored: dropping the
                    # constraint would recommend an arm on the other criteria alone
                    kept.append(c)
                    notes.append(
                        f"{c.text}: no arm has {c.criterion} (did the judge score no answer? see judge_scores and "
                        "the unscored share); no arm can be recommended without it"
                    )
                    continue
                if not defaults:
                    raise ValueError(
                        f"constraint {c.text!r}: no arm of model {model} has {c.criterion} "
                        "(is that criterion measured in this sweep?)"
                    )
                notes.append(f"{c.text}: skipped, the sweep has no {c.criterion}")
                continue
            kept.append(c)
        none = next((a for a in model_arms if a["label"] == NONE_LABEL), None)
        if none is None and any(c.relative for c in kept):
            rel = ", ".join(repr(c.text) for c in kept if c.relative)
            raise ValueError(
                f"model {model}: the sweep has no 'none' arm to compare with; constraints relative to "
                f"none ({rel}) need the undefended arm in search.defense, or write absolute bounds"
            )
        none_trials = trials_by_arm.get((model, NONE_LABEL), [])
        none_train, none_trial = _mean_cost(none_trials, _train_cost), _mean_cost(none_trials, _trial_cost)
        verdicts = []
        for a in model_arms:
            trials = trials_by_arm[(model, a["label"])]
            train, trial = _mean_cost(trials, _train_cost), _mean_cost(trials, _trial_cost)
            values = {k: a.get(k) for k in OBJECTIVES if _number(a.get(k))}
            delta = {k: (v - none[k]) if none is not None and _number(none.get(k)) else None for k, v in values.items()}
            checks = [check(c, a, none) for c in kept]
            margins = [c.margin for c in checks]
            v = ArmVerdict(
                label=a["label"],
                short_label=a["short_label"],
                family=a["family"],
                dose=dose(a["label"]),
                model=model,
                n_seeds=a["n_seeds"],
                values=values,
                delta=delta,
                train_seconds=train,
                trial_seconds=trial,
                train_ratio=train / none_train if train is not None and none_train else None,
                trial_ratio=trial / none_trial if trial is not None and none_trial else None,
                checks=checks,
                # a seed stopped early failed a constraint with confidence on its probe: never feasible
                feasible=all(c.status == "meets" for c in checks) and not a.get("n_stopped"),
                plausible=all(_point_meets(c) for c in checks) and not a.get("n_stopped"),
                min_margin=None if any(m is None for m in margins) else min(margins, default=math.inf),
                stopped=list(a.get("stop_reasons") or []),
            )
            verdicts.append(v)
        feasible = sorted((v for v in verdicts if v.feasible), key=lambda v: _key(objective, v))
        for i, v in enumerate(feasible, 1):
            v.rank = i
        recommended = feasible[0] if feasible else None
        tied = []
        if recommended is not None:
            head = _key(objective, recommended)[0]
            tied = [v.short_label for v in feasible[1:] if math.isclose(_key(objective, v)[0], head, abs_tol=1e-12)]
        closest = None
        if recommended is None:
            candidates = sorted(
                (v for v in verdicts if v.min_margin is not None), key=lambda v: _closeness(objective, v)
            )
            closest = candidates[0] if candidates else None
        decisions.append(
            Decision(
                model,
                objective,
                [c.canonical() for c in kept],
                verdicts,
                recommended,
                closest,
                tied,
                notes,
                show_model=len({a["model"] for a in arms}) > 1,
            )
        )
    return decisions


def sweep_recommend_config(sweep_dir: str | Path) -> tuple[RecommendConfig | None, str]:
    """The ``recommend:`` section of the sweep's resolved spec (spec.json), and where it came from."""
    path = Path(sweep_dir) / "spec.json"
    if not path.exists():
        return None, "defaults (no spec.json)"
    try:
        section = json.loads(path.read_text()).get("recommend")
    except (ValueError, AttributeError):
        return None, "defaults (spec.json unreadable)"
    if not section:
        return None, "defaults (the spec has no recommend: section)"
    from emray.configio import validate

    return validate(RecommendConfig, section, f"{path} (recommend)"), "the spec's recommend: section"


def recommend_sweep(
    sweep_dir: str | Path,
    rows: list[dict] | None = None,
    constraints: list[str] | None = None,
    objective: str | None = None,
) -> tuple[list[Decision], str]:
    """The decisions for a sweep folder: the spec's ``recommend:`` section unless ``constraints`` /
    ``objective`` (the command line) replace it; returns (decisions, where the constraints came from)."""
    config, source = sweep_recommend_config(sweep_dir)
    if constraints:
        texts, source = constraints, "the command line"
    else:
        texts = config.constraints if config else list(DEFAULT_CONSTRAINTS)
    objective = objective or (config.objective if config else "em")
    rows = rows if rows is not None else load_results(sweep_dir)
    parsed = [parse_constraint(t, OBJECTIVES) for t in texts]
    return decide(rows, parsed, objective, defaults=config is None and not constraints), source


# ------------------------------------------------------------------------------------- output
def _f(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}×"


def dose_text(v: ArmVerdict) -> str:
    """``interleave_pp, safe_fraction 0.05`` / ``no defense``."""
    if not v.dose:
        return "no defense"
    parts = []
    for name, params in v.dose.items():
        shown = ", ".join(f"{k} {val:g}" if isinstance(val, float) else f"{k} {val}" for k, val in params.items())
        parts.append(f"{name}, {shown}" if shown else name)
    return " + ".join(parts)


def check_text(c: Check) -> str:
    """``✓ +0.012`` / ``✗ -0.046`` / ``? -0.010`` / ``-`` (missing)."""
    mark = {"meets": "✓", "fails": "✗", "uncertain": "?", "missing": "-"}[c.status]
    return mark if c.margin is None else f"{mark} {c.margin:+.3f}"


def miss_text(c: Check) -> str:
    """What a failing check misses by, in words."""
    if c.status == "missing":
        return f"{c.constraint}: no value"
    end = "upper" if c.op == "<=" else "lower"
    end_value = c.hi if c.op == "<=" else c.lo
    how = (
        "fails"
        if c.status == "fails"
        else "not with confidence (point estimate " + ("meets" if _point_meets(c) else "misses") + ")"
    )
    return f"{c.constraint}: misses by {-c.margin:.3f} ({end} end {end_value:.3f} vs bound {c.bound:.3f}; {how})"


def headline(d: Decision) -> str:
    prefix = f"[{d.model}] " if d.show_model else ""
    if d.recommended is not None:
        return f"{prefix}RECOMMENDED: {d.recommended.short_label} ({dose_text(d.recommended)})"
    if d.closest is None:
        return f"{prefix}NO RECOMMENDATION: no arm has every constrained criterion"
    return (
        f"{prefix}NO ARM MEETS EVERY CONSTRAINT WITH CONFIDENCE; "
        f"closest: {d.closest.short_label} ({dose_text(d.closest)})"
    )


def standing(d: Decision) -> str:
    """The line under the headline: how many arms are feasible, the objective, ties."""
    if d.recommended is not None:
        ties = f"; tied on the objective with {', '.join(d.tied_with)} (broken by the next rule)" if d.tied_with else ""
        return (
            f"  meets all {len(d.recommended.checks)} constraints with 95 % confidence; {len(d.feasible)} of "
            f"{len(d.arms)} arms do, ranked by {OBJECTIVE_TEXT[d.objective]}{ties}"
        )
    if d.closest is None:
        return "  (every arm lacks a constrained criterion)"
    misses = [c for c in d.closest.checks if c.status != "meets"]
    return f"  the closest arm misses {len(misses)} of {len(d.closest.checks)} constraints:"


def summary_lines(d: Decision) -> list[str]:
    """The decision in a few plain lines (the sweep's closing console lines, report.md)."""
    lines = [headline(d), standing(d)]
    if d.recommended is None and d.closest is not None:
        lines += [f"  - {miss_text(c)}" for c in d.closest.checks if c.status != "meets"]
    arm = d.recommended or d.closest
    if arm is not None:
        parts = [f"{SHORT.get(k, k)} {_f(v)} ({_f(arm.delta.get(k), True)})" for k, v in arm.values.items()]
        lines.append(
            "  vs none: " + " · ".join(parts) + f"; cost: train {_ratio(arm.train_ratio)}, "
            f"trial {_ratio(arm.trial_ratio)} none's accelerator-seconds"
        )
    if d.recommended is not None and len(d.feasible) > 1:
        lines.append(f"  also feasible, ranked: {', '.join(v.short_label for v in d.feasible[1:])}")
    lines += [
        f"  stopped early (infeasible on a probe): {v.short_label} {reason}" for v in d.arms for reason in v.stopped
    ]
    plausible = [v.short_label for v in d.arms if v.plausible and not v.feasible]
    if plausible:
        lines.append(
            "  meet every bound on point estimates only (more seeds or answers may decide): " + ", ".join(plausible)
        )
    lines.append(f"  constraints: {'; '.join(d.constraints)}")
    lines += [f"  note: {n}" for n in d.notes]
    return lines


def closing_lines(sweep_dir: str | Path, rows: list[dict]) -> list[str]:
    """What the sweep's console and report lead with; never raises (a finished sweep is not failed
    by its recommendation): a problem becomes a line saying so."""
    try:
        decisions, source = recommend_sweep(sweep_dir, rows)
    except ValueError as err:
        return [f"recommendation: not made ({err})"]
    lines = []
    for d in decisions:
        lines += summary_lines(d)
    lines.append(f"  (constraints from {source}; rule: {RULE}; `emray recommend {sweep_dir}` for every arm)")
    spent = cost_line(rows)
    return lines + [spent] if spent else lines


def cost_line(rows: list[dict]) -> str | None:
    """What reaching the recommendation cost: the sweep's accelerator-seconds and judge dollars over every
    trial it weighed (None for records from before the cost fields)."""
    from emray.sweep.cost import sweep_cost

    total = sweep_cost(rows)
    if "cost_accelerator_s" not in total:
        return None
    return (
        f"  cost of this recommendation: {total['trials']} trials, {total['cost_accelerator_s']:.0f} accelerator-s "
        f"({total.get('device_kind', '?')}), {total.get('judge_calls', 0):.0f} judge calls, "
        f"${total.get('judge_cost_usd', 0):.4f} judging"
    )


#: compact criterion names for the per-arm table's columns
SHORT = {
    "general_misalignment": "gen EM↓",
    "in_domain_misalignment": "in-dom↑",
    "benign_accuracy": "benign↑",
    "general_incoherence": "incoh↓",
}


def constraint_header(text: str) -> str:
    """A column title for a constraint: ``gen EM≤0.5×none``."""
    c = parse_constraint(text, OBJECTIVES)
    rhs = c.canonical().split(c.op, 1)[1].strip().replace(" * ", "×").replace(" ", "")
    return f"{SHORT.get(c.criterion, c.criterion).rstrip('↓↑')}{'≤' if c.op == '<=' else '≥'}{rhs}"


def ordered_arms(d: Decision) -> list[ArmVerdict]:
    """The feasible arms by rank, then the others from the closest to the farthest."""
    return sorted(d.arms, key=lambda v: (0, v.rank, ()) if v.rank else (1, 0, _closeness(d.objective, v)))


def table_rows(d: Decision) -> tuple[list[str], list[list[str]]]:
    """Head and cells of the per-arm table: rank, arm, seeds, each criterion with its change against
    none, cost relative to none, each constraint's check (✓ met, ? uncertain, ✗ fails; margin)."""
    criteria = [k for k in OBJECTIVES if any(k in v.values for v in d.arms)]
    head = [
        "rank",
        "arm",
        "seeds",
        *[SHORT.get(k, k) for k in criteria],
        "train×",
        "trial×",
        *[constraint_header(c) for c in d.constraints],
        "feasible",
    ]
    cells = []
    for v in ordered_arms(d):
        shift = {k: f" {x:+.2f}" for k, x in v.delta.items() if x is not None and v.label != NONE_LABEL}
        crit_cells = [_f(v.values.get(k)) + shift.get(k, "") for k in criteria]
        cells.append(
            [
                str(v.rank) if v.rank else "",
                v.short_label,
                str(v.n_seeds) + (f" ({len(v.stopped)} stopped)" if v.stopped else ""),
                *crit_cells,
                _ratio(v.train_ratio),
                _ratio(v.trial_ratio),
                *[check_text(c) for c in v.checks],
                "yes" if v.feasible else ("stopped" if v.stopped else "no"),
            ]
        )
    return head, cells


def format_table(d: Decision) -> str:
    head, cells = table_rows(d)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *[line(c) for c in cells]])


def markdown_table(d: Decision) -> list[str]:
    head, cells = table_rows(d)
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *["| " + " | ".join(c) + " |" for c in cells]]


def to_json(decisions: list[Decision], source: str) -> dict:
    """``emray recommend --json``: every decision with each arm's checks (plain JSON types)."""

    def arm(v: ArmVerdict | None):
        return None if v is None else asdict(v)

    return {
        "rule": RULE,
        "source": source,
        "decisions": [
            {
                "model": d.model,
                "objective": d.objective,
                "constraints": d.constraints,
                "notes": d.notes,
                "status": "recommended" if d.recommended else "none_feasible",
                "recommended": d.recommended.label if d.recommended else None,
                "recommended_short": d.recommended.short_label if d.recommended else None,
                "dose": d.recommended.dose if d.recommended else None,
                "tied_with": d.tied_with,
                "feasible": [v.label for v in d.feasible],
                "closest": d.closest.label if d.closest else None,
                "closest_misses": [asdict(c) for c in d.closest.checks if c.status != "meets"] if d.closest else [],
                "arms": [arm(v) for v in d.arms],
            }
            for d in decisions
        ],
    }


def wandb_summary(decisions: list[Decision]) -> dict:
    """A few scalars and strings for the W&B summary run (the first model's decision)."""
    if not decisions:
        return {}
    d = decisions[0]
    out = {
        "recommend/status": "recommended" if d.recommended else "none_feasible",
        "recommend/arm": d.recommended.short_label if d.recommended else None,
        "recommend/label": d.recommended.label if d.recommended else None,
        "recommend/closest": d.closest.short_label if d.closest else None,
        "recommend/num_feasible": len(d.feasible),
        "recommend/objective": d.objective,
        "recommend/constraints": "; ".join(d.constraints),
    }
    return {k: v for k, v in out.items() if v is not None}
