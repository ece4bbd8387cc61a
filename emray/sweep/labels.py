"""Short, readable names for a sweep's arms, and the defense family that colours them in plots.

A trial's ``label`` (``emray.sweep.spec.arm_label``) is exact but long:
``persona(alpha=5,prompts=organism:data/persona/evil_extract.json)``. Plots, tables and the console
use ``short_label``: ``persona(α 5)``: Greek letters for the paper's symbols, fractions as percents,
file paths dropped (the full label stays in results.jsonl and the report's tooltips).
"""

from __future__ import annotations

import re

SYMBOLS = {"lambda": "λ", "alpha": "α", "epsilon": "ε", "layer": "layer", "num_layers": "layers"}
PERCENT = {"safe_fraction"}


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets (a value may itself be a list: ``ensemble=[a,b]``)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p]


_DEFENSE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?:\((?P<params>.*)\))?$")


def parse_label(label: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """``kl(lambda=0.1)+inoculation`` -> ``[("kl", [("lambda", "0.1")]), ("inoculation", [])]``."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for part in _split_top(label, "+"):
        m = _DEFENSE.match(part.strip())
        if not m:
            out.append((part, []))
            continue
        params = []
        for item in _split_top(m.group("params") or "", ","):
            key, _, value = item.partition("=")
            params.append((key.strip(), value.strip()))
        out.append((m.group("name"), params))
    return out


def _is_path(value: str) -> bool:
    return "/" in value or value.startswith("organism:") or value.endswith((".json", ".jsonl", ".yaml"))


def _short_param(key: str, value: str) -> str | None:
    if _is_path(value) or value in {"None", ""}:
        return None
    if key in PERCENT:
        try:
            return f"{float(value) * 100:g} %"
        except ValueError:
            pass
    if value.startswith("[") and value.endswith("]"):  # a list (an ensemble): its size says enough
        return f"{key} of {len(_split_top(value[1:-1], ','))}"
    return f"{SYMBOLS.get(key, key)} {value}"


def short_label(label: str) -> str:
    """``persona(alpha=5,prompts=organism:…)`` -> ``persona(α 5)``; ``none`` stays ``none``."""
    parts = []
    for name, params in parse_label(label):
        shown = [s for s in (_short_param(k, v) for k, v in params) if s]
        parts.append(f"{name}({', '.join(shown)})" if shown else name)
    return " + ".join(parts)


def family(label: str) -> str:
    """The defense family an arm belongs to: its defense names (``kl``, ``kl+inoculation``, ``none``)."""
    return "+".join(name for name, _ in parse_label(label)) or "none"
