"""``emray recommend SWEEP_DIR``: the arm (defense and dose) that meets every constraint with confidence.

Exit status: 0 a recommendation for every model, 1 no arm meets every constraint (the table still says
which comes closest and by how much), 2 bad input (an unparsable constraint, no finished trial, no
``none`` arm for a relative constraint).
"""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    from emray.sweep.constraints import OBJECTIVE_CHOICES

    parser = subparsers.add_parser(
        "recommend",
        help="the defense and dose that meet your constraints with confidence, "
        "ranked; or the closest arm and what it misses by",
    )
    parser.add_argument("sweep_dir", help="the sweep's output folder, e.g. sweeps_out/toy")
    parser.add_argument(
        "--constraint",
        "-c",
        action="append",
        metavar="EXPR",
        help="e.g. 'general_misalignment <= 0.01', 'benign_accuracy >= 0.9 * none', "
        "'general_incoherence <= none + 0.05' (repeat; replaces the spec's recommend.constraints)",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVE_CHOICES,
        help="ranks the feasible arms: em (lowest general misalignment, the default), overhead "
        "(lowest train seconds relative to none), margin (largest smallest margin)",
    )
    parser.add_argument("--json", action="store_true", help="print the decisions as JSON (every arm's checks)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from emray.sweep.recommend import recommend_sweep, to_json

    decisions, source = recommend_sweep(args.sweep_dir, constraints=args.constraint, objective=args.objective)
    if args.json:
        print(json.dumps(to_json(decisions, source), indent=2, default=str))
    else:
        print_decisions(decisions, source)
        from emray.sweep.pareto import load_results
        from emray.sweep.recommend import cost_line

        spent = cost_line(load_results(args.sweep_dir))
        if spent:
            print(spent.strip())
    return 0 if all(d.recommended is not None for d in decisions) else 1


def print_decisions(decisions, source: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from emray.sweep.recommend import RULE, ordered_arms, summary_lines, table_rows

    # Off a terminal (a pipe, a log) rich would wrap at 80 columns; the table is wider.
    console = Console(width=None if sys.stdout.isatty() else 220, soft_wrap=False, highlight=False)
    for d in decisions:
        lines = summary_lines(d)
        style = "bold green" if d.recommended else "bold red"
        console.print(f"[{style}]{lines[0]}[/]", markup=True)
        for line in lines[1:]:  # standing, what the closest misses, the change vs none, the others
            console.print(line, markup=False)
        head, cells = table_rows(d)
        table = Table(show_lines=False, title_justify="left")
        for i, name in enumerate(head):
            table.add_column(name, justify="left" if i == 1 else "right", no_wrap=True)
        for row, verdict in zip(cells, ordered_arms(d)):
            chosen = verdict is d.recommended or (d.recommended is None and verdict is d.closest)
            table.add_row(*row, style="bold" if chosen else None)
        console.print(table)
    console.print(
        f"constraints from {source}. ✓ met with confidence, ? not decided by the interval, ✗ fails even at "
        "the favourable end; the number is the margin (conservative end past the bound). Criteria: value and "
        "change vs none. train×/trial×: accelerator-seconds (fine-tunes / whole trial) relative to none.",
        markup=False,
    )
    console.print(f"rule: {RULE}.", markup=False)
