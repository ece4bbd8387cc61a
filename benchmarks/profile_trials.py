"""Where a sweep's trial time goes, read from a finished sweep folder (not a test).

Per trial: the wall time (``trial_seconds``), the trainers' own ``train_runtime`` (narrow + benign
fine-tune), generation, judging and the benign test's generation (the evaluations' ``timing``), and the
rest: process starts, imports, Ray Train's worker-group set-up, model loads, W&B and writing. With
``phase_seconds`` in the records (emray after issue 27) also each fit's and evaluation's wall time, so
the overhead of each splits into "around the trainer" and "around generate + judge".

    python benchmarks/profile_trials.py sweeps_out/toy                # a table on stdout
    python benchmarks/profile_trials.py sweeps_out/toy --json         # the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _timing(eval_dir: Path) -> dict:
    return _read(eval_dir / "criteria.json").get("timing", {})


def profile_trial(trial_dir: Path) -> dict | None:
    record = _read(trial_dir / "result.json")
    if not record:
        return None
    parts = [trial_dir, trial_dir / "benign"]
    trainer = sum(_read(p / "metrics.json").get("summary", {}).get("train_runtime", 0.0) for p in parts)
    timings = [_timing(p / "eval") for p in parts]
    generate = sum(t.get("generate_s", 0.0) + t.get("benign_s", 0.0) for t in timings)
    judge = sum(t.get("judge_s", 0.0) for t in timings)
    wall = record["trial_seconds"]
    phases = record.get("phase_seconds", {})
    fits = sum(v for k, v in phases.items() if k.endswith("fit_s"))
    evals = sum(v for k, v in phases.items() if k.endswith("evaluate_s"))
    return {
        "label": record["label"],
        "seed": record["seed"],
        "launcher": record.get("launcher", "ray_train"),
        "wall_s": wall,
        "trainer_s": round(trainer, 1),
        "generate_s": round(generate, 1),
        "judge_s": round(judge, 1),
        "fit_overhead_s": round(fits - trainer, 1) if phases else None,
        "eval_overhead_s": round(evals - generate - judge, 1) if phases else None,
        "wandb_s": phases.get("wandb_s"),
        "other_s": round(wall - trainer - generate - judge, 1),
        "work_share": round((trainer + generate + judge) / wall, 3) if wall else None,
    }


def profile_sweep(sweep_dir: Path) -> dict:
    trials = [p for p in (profile_trial(d) for d in sorted((sweep_dir / "trials").glob("*/"))) if p]
    totals = {k: round(sum(t[k] for t in trials), 1) for k in ("wall_s", "trainer_s", "generate_s", "judge_s")}
    work = totals["trainer_s"] + totals["generate_s"] + totals["judge_s"]
    totals["work_share"] = round(work / totals["wall_s"], 3) if totals["wall_s"] else None
    return {"sweep_dir": str(sweep_dir), "trials": trials, "totals": totals}


def format_profile(profile: dict) -> str:
    cols = ["label", "seed", "launcher", "wall_s", "trainer_s", "generate_s", "judge_s"]
    cols += ["fit_overhead_s", "eval_overhead_s", "wandb_s", "other_s", "work_share"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for t in profile["trials"]:
        lines.append("| " + " | ".join("" if t[c] is None else str(t[c]) for c in cols) + " |")
    tot = profile["totals"]
    lines.append(
        f"| all | | | {tot['wall_s']} | {tot['trainer_s']} | {tot['generate_s']} | {tot['judge_s']} | | | | "
        f"{round(tot['wall_s'] - tot['trainer_s'] - tot['generate_s'] - tot['judge_s'], 1)} | {tot['work_share']} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    profile = profile_sweep(args.sweep_dir)
    print(json.dumps(profile, indent=2) if args.json else format_profile(profile))


if __name__ == "__main__":
    main()
