"""Early stopping of trials that cannot meet the constraints (``early_stop:`` in the spec).

In the trial: at a few fractions of its narrow fine-tune, a probe (emray/train/probe.py, emray/eval/probe.py)
answers a subset of the general questions with the model as it is, judged by the sweep's judge and scored by
the criteria code of the final evaluation, and reports the numbers to Ray Tune (``ray.tune.report``:
``em_probe/general_misalignment`` with ``_k``/``_n``, ``step``, ``probe_fraction``). It writes them to
``trials/<key>/probes.jsonl`` too, with the answers under ``trials/<key>/probe/``.

In the driver: ``EarlyStopper``, a ``ray.tune.Stopper``, judges each probe by the recommendation's own rule
(emray/sweep/recommend.py ``check``): the probe's 95 % Wilson interval over its answers against the bound, a
bound relative to none at none's interval end (none's finished trials, every seed). A trial is stopped when
a constraint on a criterion the probe may decide (``early_stop.criteria``) **fails**: even the favourable end
of the probe's interval misses the favourable bound. A relative constraint is skipped until every planned
``none`` trial of the model has finished. The stopper writes the stopped trial's ``result.json`` (marked
``stopped_early`` with ``stop_reason``, the step and the probe's numbers) before Tune ends the trial, so a
re-run or ``--resume`` finds it finished and does not run it again, and ``emray recommend`` / ``emray pareto``
count its arm infeasible.

What it cannot do: probes need the fine-tune in the trial's own process (``resources.launcher: in_trial``,
one CPU worker); a trial trained by a Ray Train worker group reports nothing until it ends, so it runs to the
end (the dry-run plan says so). It sees the narrow fine-tune only: benign accuracy is never probed. And it
assumes a criterion that fails mid-training stays failed: BENCHMARKS.md "Early stopping" measures how often
that was wrong on the organism.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emray.sweep.constraints import DEFAULT_CONSTRAINTS, Constraint, parse_constraint
from emray.sweep.pareto import arm_rows, read_result
from emray.sweep.recommend import Check, check
from emray.sweep.spec import OBJECTIVES, PROBE_CRITERIA, EarlyStopConfig, SweepSpec, Trial

PROBE_PREFIX = "em_probe/"
PROBES_FILE = "probes.jsonl"
NONE_LABEL = "none"


# ------------------------------------------------------------------------------------- in the trial
def probes_available(trial: Trial) -> bool:
    """A probe needs the model in training in this process: an in-trial SFT fine-tune."""
    return trial.run.resources.runs_in_trial() and trial.run.scenario == "narrow"


def probe_callback(trial: Trial, config: EarlyStopConfig, judge: Any, trial_dir: Path, started: float):
    """The TrainerCallback of a trial's narrow fine-tune that probes at ``config.fractions`` and reports."""
    from emray.eval.probe import probe_evaluate
    from emray.sweep.cost import trial_cost
    from emray.train.probe import ProbeCallback

    def probe(step: int, total: int, fraction: float, model, tokenizer) -> None:
        criteria, answers = probe_evaluate(
            trial.run, model, tokenizer, judge, config.questions, config.samples, config.in_domain, f"probe-{step}"
        )
        elapsed = time.time() - started
        cost = trial_cost(trial.run.resources, {"fit_s": elapsed}, [])
        report = {
            "trial_key": trial.key,
            "step": step,
            "total_steps": total,
            "probe_fraction": fraction,
            "elapsed_s": round(elapsed, 2),
            **{PROBE_PREFIX + k: v for k, v in criteria.items() if _number(v)},
            **{k: v for k, v in cost.items() if _number(v) or isinstance(v, str)},
        }
        folder = trial_dir / "probe"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"step-{step}.jsonl", "w") as fh:
            fh.writelines(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
        with open(trial_dir / PROBES_FILE, "a") as fh:
            fh.write(json.dumps(report) + "\n")
        from ray import tune

        # Blocks until the driver has read it; when the stopper stops this trial, Tune ends this thread here.
        tune.report(report)

    return ProbeCallback(config.fractions, probe)


def read_probes(trial_dir: Path) -> list[dict]:
    """A trial's probe reports, in order (``probes.jsonl``; [] without probes)."""
    try:
        text = (Path(trial_dir) / PROBES_FILE).read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------- the rule
def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def probe_arm(report: dict) -> dict:
    """The probe as an arm row for ``recommend.check``: each criterion's rate with its answer counts, so
    its interval is the Wilson interval over the probe's answers."""
    row: dict = {}
    for crit in PROBE_CRITERIA:
        value = report.get(PROBE_PREFIX + crit)
        if not _number(value):
            continue
        row[crit] = value
        k, n = report.get(f"{PROBE_PREFIX}{crit}_k"), report.get(f"{PROBE_PREFIX}{crit}_n")
        if isinstance(k, int) and isinstance(n, int):
            row[f"{crit}_k"], row[f"{crit}_n"] = k, n
    return row


@dataclass
class StopDecision:
    stop: bool
    failing: list[Check] = field(default_factory=list)  # constraints the probe fails with confidence
    skipped: list[str] = field(default_factory=list)  # constraints it could not decide, and why


def decide_stop(
    report: dict, constraints: list[Constraint], none: dict | None, criteria: set[str] | frozenset[str]
) -> StopDecision:
    """Stop when a probe-decidable constraint fails by recommend's rule (``check(...).status == "fails"``).
    ``none``: the undefended arm's row (every seed finished), or None while it is not."""
    row = probe_arm(report)
    failing, skipped = [], []
    for c in constraints:
        if c.criterion not in criteria:
            skipped.append(f"{c.canonical()}: not decided by a probe (early_stop.criteria)")
        elif c.criterion not in row:
            skipped.append(f"{c.canonical()}: the probe has no {c.criterion}")
        elif c.relative and none is None:
            skipped.append(f"{c.canonical()}: relative to none, which has not finished")
        else:
            result = check(c, row, none)
            if result.status == "fails":
                failing.append(result)
    return StopDecision(bool(failing), failing, skipped)


def stop_reason(report: dict, decision: StopDecision) -> str:
    where = (
        f"probe at step {report.get('step')}/{report.get('total_steps')} "
        f"({100 * float(report.get('probe_fraction', 0)):.0f} %), "
        f"{report.get(PROBE_PREFIX + 'general_misalignment_n', '?')} answers"
    )
    return f"{where}: " + "; ".join(
        f"{c.constraint}: {c.criterion} {c.value:.3f} (95 % Wilson {c.lo:.3f}-{c.hi:.3f}) fails even at the "
        f"favourable end (margin {c.margin:+.3f})"
        for c in decision.failing
    )


def sweep_constraints(spec: SweepSpec) -> list[Constraint]:
    texts = spec.recommend.constraints if spec.recommend else list(DEFAULT_CONSTRAINTS)
    constraints = [parse_constraint(t, OBJECTIVES) for t in texts]
    return constraints


# --------------------------------------------------------------------------------- the stopped record
def stopped_record(trial_dir: Path, report: dict, decision: StopDecision) -> dict:
    """The result.json of a stopped trial: who it is (its trial.json), that and why it stopped, the probe's
    numbers and what it cost until then; no final criteria (it has none)."""
    planned = json.loads((trial_dir / "trial.json").read_text())
    run = planned.get("run", {})
    return {
        "trial_key": planned.get("key", trial_dir.name),
        "trial_index": planned.get("index"),
        "label": planned.get("label"),
        "model": run.get("model", {}).get("name"),
        "seed": run.get("seed"),
        "defenses": run.get("defenses", []),
        "stopped_early": True,
        "stop_reason": stop_reason(report, decision),
        "stop_constraints": [c.constraint for c in decision.failing],
        "stop_criteria": sorted({c.criterion for c in decision.failing}),
        "stop_step": report.get("step"),
        "stop_total_steps": report.get("total_steps"),
        "stop_fraction": report.get("probe_fraction"),
        "fine_tune_steps": report.get("step"),  # the narrow fine-tune's steps run; no benign fine-tune
        **{k: v for k, v in report.items() if k.startswith(PROBE_PREFIX)},
        "train_seconds": report.get("elapsed_s"),
        "trial_seconds": report.get("elapsed_s"),
        **{k: v for k, v in report.items() if k.startswith("cost_") or k in ("device_kind", "devices")},
        "launcher": "in_trial",
    }


def write_stopped(trial_dir: Path, record: dict) -> None:
    tmp = trial_dir / "result.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(trial_dir / "result.json")  # atomic, as a finished trial's


# ------------------------------------------------------------------------------------ the stopper
def make_stopper(spec: SweepSpec, trials: list[Trial], sweep_dir: Path):
    """The ``ray.tune.Stopper`` of a sweep with ``early_stop.stop``."""
    from ray.tune import Stopper

    assert spec.early_stop is not None
    config = spec.early_stop
    constraints = sweep_constraints(spec)
    planned_none: dict[str, list[str]] = {}
    if spec.search.algorithm in ("grid", "dose_search"):
        for t in trials:
            if not t.run.defenses:
                planned_none.setdefault(t.run.model.name, []).append(t.key)

    class EarlyStopper(Stopper):
        """Stops a trial whose probe is confidently infeasible (emray/sweep/early_stop.py)."""

        def __init__(self):
            self.none: dict[str, dict] = {}  # model -> none's arm row, once every none trial finished
            self.stopped: dict[str, str] = {}  # trial key -> reason

        def none_arm(self, model: str) -> dict | None:
            if model not in self.none:
                records = none_records(sweep_dir, model, planned_none.get(model))
                if records:
                    self.none[model] = arm_rows(records)[0]
            return self.none.get(model)

        def __call__(self, trial_id: str, result: dict) -> bool:
            key = result.get("trial_key")
            if not key or result.get("stopped_early") or not any(k.startswith(PROBE_PREFIX) for k in result):
                return False  # a trial's final report, or a finished (or stopped) trial's record read again
            folder = sweep_dir / "trials" / key
            model = json.loads((folder / "trial.json").read_text())["run"]["model"]["name"]
            decision = decide_stop(result, constraints, self.none_arm(model), set(config.criteria))
            if not decision.stop:
                return False
            record = stopped_record(folder, result, decision)
            write_stopped(folder, record)
            self.stopped[key] = record["stop_reason"]
            print(
                f"[emray] stopped early: {record['label']} seed {record['seed']}: {record['stop_reason']}", flush=True
            )
            return True

        def stop_all(self) -> bool:
            return False

    return EarlyStopper()


def none_records(sweep_dir: Path, model: str, planned: list[str] | None) -> list[dict] | None:
    """The undefended arm's finished records of ``model``: every planned one (None while one is missing);
    without a plan (random, optuna), whatever has finished."""
    if planned is not None:
        records = [read_result(sweep_dir / "trials" / k / "result.json") for k in planned]
        if not records or any(r is None or r.get("stopped_early") for r in records):
            return None
        return [r for r in records if r is not None]
    found = [read_result(p) for p in sorted(Path(sweep_dir).glob("trials/*/result.json"))]
    rows = [r for r in found if r and r.get("label") == NONE_LABEL and r.get("model") == model]
    return rows or None


def is_stopped(record: dict) -> bool:
    return bool(record.get("stopped_early"))
