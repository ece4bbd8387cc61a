"""The seed paper's table for a finished sweep: per defense arm, mean ± std over seeds.

    python analysis/paper_table.py sweeps_out/toy
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict

from emray.sweep.pareto import load_results

COLUMNS = ["general_misalignment", "general_incoherence", "in_domain_misalignment", "in_domain_incoherence", "benign_accuracy"]


def paper_table(rows: list[dict]) -> str:
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_arm[r["label"]].append(r)
    head = "| defense | seeds | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for arm, group in by_arm.items():
        cells = []
        for c in COLUMNS:
            values = [r[c] for r in group if isinstance(r.get(c), (int, float))]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
        lines.append(f"| {arm} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(paper_table(load_results(sys.argv[1])))
