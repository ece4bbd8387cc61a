"""``emray pareto SWEEP_DIR``: the per-arm table (mean over seeds, intervals) with the Pareto front marked."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pareto", help="print a sweep's results per arm with its Pareto front (and redraw plots)"
    )
    parser.add_argument("sweep_dir", help="the sweep's output folder, e.g. sweeps_out/toy")
    parser.add_argument("--front-only", action="store_true", help="only the arms on the Pareto front")
    parser.add_argument("--trials", action="store_true", help="one row per trial (every seed) instead of one per arm")
    parser.add_argument(
        "--cost", action="store_true", help="also the cost per arm and the sweep's totals (docs/results.md)"
    )
    parser.add_argument("--plots", action="store_true", help="also redraw the plots into SWEEP_DIR/plots")
    parser.set_defaults(func=run)


def run(args) -> int:
    from emray.sweep.pareto import (
        arm_rows,
        format_arm_table,
        format_table,
        interval_note,
        load_results,
        stopped_lines,
        write_results,
    )

    rows = write_results(args.sweep_dir, load_results(args.sweep_dir))
    arms = arm_rows(rows)
    if args.trials:
        print(format_table([r for r in rows if r["is_pareto"]] if args.front_only else rows))
    else:
        print(format_arm_table([a for a in arms if a["is_pareto"]] if args.front_only else arms))
        print(f"intervals: {interval_note(arms)}")
        if stopped := stopped_lines(arms):
            print("\n".join(stopped))
    print(f"\n{sum(a['is_pareto'] for a in arms)} of {len(arms)} arms on the Pareto front (computed on arm means)")
    if args.cost:
        from emray.sweep.cost import format_cost, sweep_cost

        print("\n" + format_cost(arms, sweep_cost(rows)))
    if args.plots:
        from emray.sweep.plots import write_plots

        for path in write_plots(args.sweep_dir, [r for r in rows if not r.get("stopped_early")]):
            print(path)
    return 0
