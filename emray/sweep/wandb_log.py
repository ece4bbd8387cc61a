"""W&B: one run per trial (grouped by sweep) and one summary run with the Pareto table and plots.

Offline when no API key is set (``mode: auto``), so runs land in ``<sweep>/wandb`` and can be
uploaded later with ``wandb sync <sweep>/wandb/offline-run-*``. Every run is finished explicitly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from emray.sweep.spec import OBJECTIVES


def resolve_mode(mode: str) -> str:
    if os.environ.get("WANDB_MODE") in {"offline", "disabled", "online"}:
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


def wandb_settings(spec, sweep_dir: Path) -> dict:
    w = spec.wandb
    return {
        "enabled": w.enabled,
        "project": w.project,
        "entity": w.entity,
        "mode": resolve_mode(w.mode),
        "group": spec.name,
        "dir": str((sweep_dir / "wandb_root").resolve()),
    }


def _init(settings: dict, name: str, job_type: str, config: dict):
    import wandb

    Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=settings["project"],
        entity=settings["entity"],
        group=settings["group"],
        name=name,
        job_type=job_type,
        config=config,
        dir=settings["dir"],
        mode=settings["mode"],
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"),
    )


def log_trial(trial, record: dict, trial_dir: Path, settings: dict) -> str | None:
    """Config, training curves and criteria of one trial; returns the run's local folder."""
    if not settings.get("enabled") or settings["mode"] == "disabled":
        return None
    config = trial.run.model_dump(mode="json", by_alias=True)
    config["trial_key"], config["label"] = trial.key, trial.label
    run = _init(settings, trial.run.name, "trial", config)
    try:
        metrics_file = trial_dir / "metrics.json"
        if metrics_file.exists():
            for entry in json.loads(metrics_file.read_text()).get("history", []):
                if "loss" in entry:
                    run.log({f"train/{k}": v for k, v in entry.items() if isinstance(v, (int, float))}, step=int(entry.get("step", 0)))
        for key, value in record.items():
            if isinstance(value, (int, float)):
                run.summary[key] = value
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def log_summary(spec, sweep_dir: Path, rows: list[dict]) -> str | None:
    """The sweep's summary run: the Pareto table (with is_pareto) and the scatter plots."""
    settings = wandb_settings(spec, sweep_dir)
    if not settings["enabled"] or settings["mode"] == "disabled":
        return None
    import wandb

    run = _init(settings, f"{spec.name}-summary", "summary", spec.model_dump(mode="json", by_alias=True))
    try:
        columns = ["label", "model", "seed", "trial_key", *OBJECTIVES, "in_domain_incoherence", "is_pareto"]
        table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        run.log({"pareto_table": table})
        for png in sorted((sweep_dir / "plots").glob("*.png")):
            run.log({f"plots/{png.stem}": wandb.Image(str(png))})
        run.summary["num_trials"] = len(rows)
        run.summary["num_pareto"] = sum(bool(r.get("is_pareto")) for r in rows)
        return str(Path(run.dir).parent)
    finally:
        run.finish()
