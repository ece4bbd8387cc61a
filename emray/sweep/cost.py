"""What a trial, an arm and a sweep cost: accelerator-seconds by phase, judge calls, tokens and dollars.

A trial's cost fields (flat, so results.csv, Tune and W&B take them as they are):

- ``cost_<phase>_s`` for the phases ``train``, ``benign_train``, ``generate`` and ``judge``: wall seconds
  times the accelerators the phase holds. On GPUs an accelerator is a GPU (a fine-tune holds
  ``num_workers``, an evaluation one); on CPUs it is a core (``cpus_per_worker`` per worker). Generation
  covers both evaluations' sampling (the benign predictions too); judging is the wall time the
  evaluation waited for the judge, charged to the devices it held while waiting.
- ``cost_accelerator_s``: their sum; ``device_kind``: the GPU's name, ``gpu`` or ``cpu``; ``devices``:
  how many the fine-tune held.
- ``judge_calls`` (judgments asked of the judge, not found in its cache), ``judge_prompt_tokens``,
  ``judge_completion_tokens``, ``judge_cost_usd`` (emray/eval/judge.py ``price_for``; a local judge is free).

Per arm (``arm_cost``): each field's mean per trial, ``<field>_total`` over the arm's trials and
``cost_overhead``: the arm's mean ``cost_accelerator_s`` over the ``none`` arm's of the same model.
Per sweep (``sweep_cost``): the totals, written to ``SWEEP_DIR/cost.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PHASES = ("train", "benign_train", "generate", "judge")
JUDGE_FIELDS = ("judge_calls", "judge_prompt_tokens", "judge_completion_tokens", "judge_cost_usd")
#: the additive cost fields of a trial record (what arms and the sweep sum)
COST_FIELDS = (*(f"cost_{p}_s" for p in PHASES), "cost_accelerator_s", *JUDGE_FIELDS)


def device_kind(use_gpu: bool) -> str:
    """The accelerator's name as torch sees it here, ``gpu`` when this process has none to ask, or ``cpu``."""
    if not use_gpu:
        return "cpu"
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "gpu"
    except (ImportError, RuntimeError):
        return "gpu"


def _devices(resources) -> tuple[float, float]:
    """(accelerators a fine-tune holds, accelerators an evaluation holds)."""
    if resources.use_gpu:
        return float(resources.num_workers), 1.0
    return resources.num_workers * resources.cpus_per_worker, float(resources.cpus_per_worker)


def _eval_record(eval_dir: Path) -> dict:
    """criteria.json's timing and this evaluation's own judge usage ({} for a missing file)."""
    try:
        data = json.loads((eval_dir / "criteria.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"timing": data.get("timing") or {}, "own": (data.get("judge") or {}).get("own") or {}}


def trial_cost(resources, phases: dict[str, float], eval_dirs: list[Path]) -> dict[str, Any]:
    """A trial's cost fields from its phase timings (``fit_s``, ``benign_fit_s``) and evaluation folders."""
    train_devices, eval_devices = _devices(resources)
    evals = [_eval_record(d) for d in eval_dirs]
    generate = sum(e["timing"].get("generate_s", 0) + e["timing"].get("benign_s", 0) for e in evals if e)
    judge = sum(e["timing"].get("judge_s", 0) for e in evals if e)
    seconds = {
        "train": phases.get("fit_s", 0) * train_devices,
        "benign_train": phases.get("benign_fit_s", 0) * train_devices,
        "generate": generate * eval_devices,
        "judge": judge * eval_devices,
    }
    out: dict[str, Any] = {f"cost_{p}_s": round(s, 2) for p, s in seconds.items()}
    out["cost_accelerator_s"] = round(sum(seconds.values()), 2)
    out["device_kind"] = device_kind(resources.use_gpu)
    out["devices"] = train_devices
    own = [e["own"] for e in evals if e]
    out["judge_calls"] = sum(o.get("calls", 0) for o in own)
    out["judge_prompt_tokens"] = sum(o.get("prompt_tokens", 0) for o in own)
    out["judge_completion_tokens"] = sum(o.get("completion_tokens", 0) for o in own)
    out["judge_cost_usd"] = round(sum(o.get("cost_usd", 0.0) for o in own), 6)
    return out


def _numbers(trials: list[dict], key: str) -> list[float]:
    return [t[key] for t in trials if isinstance(t.get(key), (int, float)) and not isinstance(t.get(key), bool)]


def arm_cost(trials: list[dict]) -> dict[str, Any]:
    """An arm's cost: each field's mean per trial and its total (``<field>_total``); no field, no key."""
    out: dict[str, Any] = {}
    for key in COST_FIELDS:
        values = _numbers(trials, key)
        if values:
            out[key] = sum(values) / len(values)
            out[f"{key}_total"] = sum(values)
    kinds = sorted({t["device_kind"] for t in trials if t.get("device_kind")})
    if kinds:
        out["device_kind"] = ", ".join(kinds)
    return out


def add_overheads(arms: list[dict]) -> list[dict]:
    """``cost_overhead`` on each arm: its mean accelerator-seconds over the same model's ``none`` arm's."""
    none = {a.get("model"): a.get("cost_accelerator_s") for a in arms if a.get("label") == "none"}
    for arm in arms:
        base, mine = none.get(arm.get("model")), arm.get("cost_accelerator_s")
        arm["cost_overhead"] = mine / base if base and mine is not None else None
    return arms


def sweep_cost(trials: list[dict]) -> dict[str, Any]:
    """The sweep's totals over its trials (what ``SWEEP_DIR/cost.json`` holds)."""
    out: dict[str, Any] = {"trials": len(trials)}
    for key in COST_FIELDS:
        values = _numbers(trials, key)
        if values:
            out[key] = round(sum(values), 6)
    kinds = sorted({t["device_kind"] for t in trials if t.get("device_kind")})
    if kinds:
        out["device_kind"] = ", ".join(kinds)
    return out


def format_cost(arms: list[dict], total: dict[str, Any]) -> str:
    """A per-arm cost table and the sweep's totals (what ``emray pareto --cost`` prints)."""
    head = f"{'arm':<40} {'trials':>6} {'accel-s/trial':>13} {'vs none':>8} {'judge calls':>11} {'judge $':>9}"
    lines = [head, "-" * len(head)]
    for arm in arms:
        overhead = arm.get("cost_overhead")
        lines.append(
            f"{str(arm.get('short_label') or arm.get('label'))[:40]:<40} {arm.get('n_seeds', ''):>6} "
            f"{_num(arm.get('cost_accelerator_s'), '.1f'):>13} {_num(overhead, '.2f', '×'):>8} "
            f"{_num(arm.get('judge_calls_total'), '.0f'):>11} {_num(arm.get('judge_cost_usd_total'), '.4f'):>9}"
        )
    phases = ", ".join(f"{p} {total.get(f'cost_{p}_s', 0):.0f}" for p in PHASES)
    lines.append(
        f"sweep: {total.get('trials', 0)} trials, {total.get('cost_accelerator_s', 0):.0f} accelerator-s "
        f"({total.get('device_kind', '?')}; {phases}), {total.get('judge_calls', 0):.0f} judge calls, "
        f"{total.get('judge_prompt_tokens', 0) + total.get('judge_completion_tokens', 0):.0f} tokens, "
        f"${total.get('judge_cost_usd', 0):.4f}"
    )
    return "\n".join(lines)


def _num(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"
