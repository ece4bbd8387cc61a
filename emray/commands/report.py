"""``emray report SWEEP_DIR``: a self-contained HTML page and a Markdown summary of a finished sweep."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write SWEEP_DIR/report.html (self-contained, opens offline), report.md and report.zip (to mail)"
    )
    parser.add_argument("sweep_dir", help="the sweep's output folder, e.g. sweeps_out/toy")
    parser.set_defaults(func=run)


def run(args) -> int:
    from emray.sweep.report import write_report

    html_path, md_path = write_report(args.sweep_dir)
    print(
        f"{html_path}\n{md_path}\n{html_path.with_name('report.zip')}  (both pages and every file they link: mail this)"
    )
    return 0
