"""Pareto plots: a scatter per pair of criteria (front highlighted) and parallel coordinates.

Each plot is written as PNG (matplotlib) and HTML (plotly) into ``<sweep>/plots/``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from emray.sweep.spec import OBJECTIVES

ARROW = {"min": "↓", "max": "↑"}


def _present(rows: list[dict]) -> list[str]:
    return [k for k in OBJECTIVES if any(isinstance(r.get(k), (int, float)) for r in rows)]


def scatter_pairs(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.express as px

    written = []
    keys = _present(rows)
    for x, y in itertools.combinations(keys, 2):
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for on_front, style in ((False, dict(c="#9aa", s=30)), (True, dict(c="#d33", s=60, edgecolors="k"))):
            pts = [r for r in rows if bool(r.get("is_pareto")) == on_front and r.get(x) is not None and r.get(y) is not None]
            ax.scatter([r[x] for r in pts], [r[y] for r in pts], label="Pareto front" if on_front else "dominated", **style)
            for r in pts:
                ax.annotate(r.get("label", ""), (r[x], r[y]), fontsize=6, alpha=0.8)
        ax.set_xlabel(f"{x} {ARROW[OBJECTIVES[x]]}")
        ax.set_ylabel(f"{y} {ARROW[OBJECTIVES[y]]}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        png = out / f"scatter_{x}__{y}.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        fig2 = px.scatter(
            rows, x=x, y=y, color=[("front" if r.get("is_pareto") else "dominated") for r in rows],
            hover_data=["label", "seed", "trial_key"],
        )
        fig2.write_html(out / f"scatter_{x}__{y}.html", include_plotlyjs="cdn")
        written.append(png)
    return written


def parallel_coordinates(rows: list[dict], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    keys = _present(rows)
    if len(keys) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if all(isinstance(r.get(k), (int, float)) for k in keys):
            ax.plot(range(len(keys)), [r[k] for k in keys], color="#d33" if r.get("is_pareto") else "#9aa",
                    lw=2 if r.get("is_pareto") else 1, alpha=0.9)
    ax.set_xticks(range(len(keys)), [f"{k}\n{ARROW[OBJECTIVES[k]]}" for k in keys], fontsize=7)
    ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    png = out / "parallel_coordinates.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    full = [r for r in rows if all(isinstance(r.get(k), (int, float)) for k in keys)]
    dims = [dict(label=f"{k} {ARROW[OBJECTIVES[k]]}", values=[r[k] for r in full], range=[0, 1]) for k in keys]
    fig2 = go.Figure(go.Parcoords(line=dict(color=[1 if r.get("is_pareto") else 0 for r in full], colorscale=[[0, "#9aa"], [1, "#d33"]]), dimensions=dims))
    fig2.write_html(out / "parallel_coordinates.html", include_plotlyjs="cdn")
    return png


def write_plots(sweep_dir: str | Path, rows: list[dict]) -> list[Path]:
    out = Path(sweep_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = scatter_pairs(rows, out)
    pc = parallel_coordinates(rows, out)
    return written + ([pc] if pc else [])
