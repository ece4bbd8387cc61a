"""The README's screenshots (docs/img/), from a real sweep, with headless Chromium (Debian's ``chromium``).

    python scripts/screenshots.py console TMUX_TARGET         # the console table mid-sweep, from a tmux pane
    python scripts/screenshots.py report SWEEP_DIR           # emray report's page, as a browser shows it
    python scripts/screenshots.py plots SWEEP_DIR            # the heat map and one 2-D view

A tmux pane is captured with its colours (``tmux capture-pane -e``), turned into HTML by rich and
rendered by Chromium, so the PNG shows what the terminal showed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def chromium_png(url: str, out: Path, width: int, height: int) -> Path:
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            "--virtual-time-budget=15000",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return out


def console(target: str) -> Path:
    from rich.console import Console
    from rich.text import Text

    ansi = subprocess.run(
        ["tmux", "capture-pane", "-e", "-p", "-t", target], check=True, capture_output=True, text=True
    ).stdout
    lines = ansi.rstrip("\n").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rec = Console(
        record=True, width=max(len(Text.from_ansi(x).plain) for x in lines) + 2, force_terminal=True, file=io.StringIO()
    )
    rec.print(Text.from_ansi("\n".join(lines)))
    from rich.terminal_theme import MONOKAI

    html = rec.export_html(
        theme=MONOKAI,
        inline_styles=True,
        code_format=(
            '<html><head><meta charset="utf-8"></head><body style="background:{background};color:{foreground};margin:12px">'
            '<pre style="font:13px/1.2 DejaVu Sans Mono,monospace;margin:0">{code}</pre></body></html>'
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "console.html"
        page.write_text(html)
        return chromium_png(page.as_uri(), IMG / "console.png", 1000, 16 * len(lines) + 30)


def report(sweep_dir: str) -> Path:
    page = Path(sweep_dir) / "report.html"
    if not page.exists():
        subprocess.run([sys.executable, "-m", "emray.cli", "report", sweep_dir], check=True)
    return chromium_png(page.resolve().as_uri(), IMG / "report.png", 1280, 1500)


def plots(sweep_dir: str) -> list[Path]:
    src = Path(sweep_dir) / "plots"
    out = [IMG / "heatmap.png", IMG / "scatter.png"]
    shutil.copy(src / "heatmap.png", out[0])
    shutil.copy(src / "scatter_general_misalignment__in_domain_misalignment.png", out[1])
    return out


if __name__ == "__main__":
    IMG.mkdir(parents=True, exist_ok=True)
    what, arg = sys.argv[1], sys.argv[2]
    print({"console": console, "report": report, "plots": plots}[what](arg))
