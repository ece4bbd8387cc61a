"""Redraw a finished sweep's Pareto plots (PNG + HTML) into <sweep>/plots/.

python analysis/plot_pareto.py sweeps_out/toy
"""

from __future__ import annotations

import sys

from emray.sweep.pareto import load_results, with_pareto
from emray.sweep.plots import write_plots


def main(sweep_dir: str) -> None:
    rows = with_pareto(load_results(sweep_dir))
    for path in write_plots(sweep_dir, rows):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1])
