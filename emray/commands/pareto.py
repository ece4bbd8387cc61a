"""``emray pareto SWEEP_DIR``: the results table with the Pareto front marked."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("pareto", help="print a sweep's results table with its Pareto front (and redraw plots)")
    parser.add_argument("sweep_dir", help="the sweep's output folder, e.g. sweeps_out/toy")
    parser.add_argument("--front-only", action="store_true", help="only the non-dominated trials")
    parser.add_argument("--plots", action="store_true", help="also redraw the plots into SWEEP_DIR/plots")
    parser.set_defaults(func=run)


def run(args) -> int:
    from emray.sweep.pareto import format_table, load_results, write_results

    rows = write_results(args.sweep_dir, load_results(args.sweep_dir))
    shown = [r for r in rows if r["is_pareto"]] if args.front_only else rows
    print(format_table(shown))
    print(f"\n{sum(r['is_pareto'] for r in rows)} of {len(rows)} trials on the Pareto front")
    if args.plots:
        from emray.sweep.plots import write_plots

        for path in write_plots(args.sweep_dir, rows):
            print(path)
    return 0
