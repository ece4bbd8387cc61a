"""A sweep's compute in trial-steps: the fine-tune optimizer steps its trials actually ran (narrow + benign,
``fine_tune_steps`` in each result.json; a trial stopped early counts the steps it ran), against the full grid
of the same spec, where every trial runs ``train.max_steps`` + ``benign.max_steps``. BENCHMARKS.md "Early
stopping".

    python benchmarks/trial_steps.py sweeps_out/tune-organism-adaptive-es sweeps/organism-tune.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emray.sweep.pareto import load_results
from emray.sweep.spec import expand_trials, load_sweep_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("spec", type=Path, help="the spec whose full grid is the reference")
    args = parser.parse_args(argv)
    spec = load_sweep_spec(args.spec)
    per_trial = spec.base.train.max_steps + (
        (spec.base.benign.max_steps or spec.base.train.max_steps) if spec.base.benign else 0
    )
    grid = len(expand_trials(spec))
    rows = load_results(args.sweep_dir)
    missing = [r["label"] for r in rows if not isinstance(r.get("fine_tune_steps"), int)]
    if missing:
        print(
            f"{args.sweep_dir}: no fine_tune_steps in {len(missing)} record(s) (made before the field)", file=sys.stderr
        )
        return 2
    stopped = [r for r in rows if r.get("stopped_early")]
    spent = sum(r["fine_tune_steps"] for r in rows)
    where = ", ".join(f"{r['label']} s{r['seed']} at step {r['stop_step']}" for r in stopped) or "-"
    print(f"{args.sweep_dir}: {len(rows)} trials ({len(stopped)} stopped early: {where})")
    print(
        f"trial-steps: {spent} of the full grid's {grid} x {per_trial} = {grid * per_trial} "
        f"({100 * spent / (grid * per_trial):.1f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
