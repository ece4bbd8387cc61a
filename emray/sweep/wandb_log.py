"""W&B the way its users work: one run per trial in the sweep's group, plus a summary run.

Per trial run: config = the resolved run config plus flat columns W&B's own scatter and
parallel-coordinates panels can use across the group (``arm``, ``defense``, ``seed``, ``hp.<defense>.<param>``);
summary = the criteria with their counts and intervals; the training curve (``train/*``, by step);
tags ``model:…``, ``scenario:…`` (the fine-tune data), ``defense:…``, ``sweep:…``; the LoRA adapter as a
``model`` artifact (``wandb.log_adapters: false`` to skip: adapters of large models are large).

Summary run: the per-arm table (means, intervals, front) and the per-trial table as ``wandb.Table``,
a native ``wandb.plot.scatter`` per pair of criteria over the arms, and the PNG plots.

Offline when no API key is set (``mode: auto``): runs land in ``<sweep>/wandb_root/wandb`` and upload
with ``wandb sync <sweep>/wandb_root/wandb/offline-run-*``. A saved workspace for the group is created
only online (it is a W&B server object), with the ``wandb-workspaces`` package; offline, a message says so.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from emray.sweep.labels import family, short_label
from emray.sweep.spec import OBJECTIVES


def resolve_mode(mode: str) -> str:
    if os.environ.get("WANDB_MODE") in {"offline", "disabled", "online"}:
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


def scenario(spec_or_run) -> str:
    """The fine-tuning scenario: the fine-tune data file's stem (``code``, ``bad_medical_advice``)."""
    base = getattr(spec_or_run, "base", spec_or_run)
    fine = str(getattr(base.data, "fine", "") or "")
    return Path(fine.split(":", 1)[-1]).stem or "unknown"


def wandb_settings(spec, sweep_dir: Path) -> dict:
    w = spec.wandb
    return {
        "enabled": w.enabled,
        "project": w.project,
        "entity": w.entity,
        "mode": resolve_mode(w.mode),
        "group": spec.name,
        "dir": str((sweep_dir / "wandb_root").resolve()),
        "log_adapters": getattr(w, "log_adapters", True),
        "tags": list(getattr(w, "tags", [])),
        "workspace": getattr(w, "workspace", True),
    }


def _init(settings: dict, name: str, job_type: str, config: dict, tags: list[str] | None = None):
    import wandb

    Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=settings["project"],
        entity=settings["entity"],
        group=settings["group"],
        name=name,
        job_type=job_type,
        config=config,
        tags=tags,
        dir=settings["dir"],
        mode=settings["mode"],
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"),
    )


def trial_tags(trial, settings: dict) -> list[str]:
    tags = [f"model:{trial.run.model.name}", f"scenario:{scenario(trial.run)}", f"defense:{family(trial.label)}",
            f"sweep:{settings['group']}", *settings.get("tags", [])]
    return [t[:64] for t in tags]  # W&B's tag length limit


def flat_config(trial) -> dict:
    """Columns for W&B's panels: the arm, its family and every defense hyperparameter as a scalar."""
    out = {"arm": short_label(trial.label), "label": trial.label, "defense": family(trial.label), "seed": trial.run.seed,
           "model_name": trial.run.model.name, "trial_key": trial.key}
    for d in trial.run.defenses:
        for k, v in d.params.items():
            if isinstance(v, (int, float, str, bool)):
                out[f"hp.{d.name}.{k}"] = v
    return out


def trial_run_id(trial_key: str, settings: dict) -> str:
    """One W&B run id per trial and sweep folder: the live training run and the end-of-trial
    logging write to the same run (offline, ``wandb sync`` merges the two folders into it)."""
    import hashlib

    return f"{trial_key}-{hashlib.sha1(settings['dir'].encode()).hexdigest()[:6]}"


def _trial_run(trial, settings: dict, resume: bool):
    config = trial.run.model_dump(mode="json", by_alias=True)
    config.update(flat_config(trial))
    import wandb

    Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
    return wandb.init(project=settings["project"], entity=settings["entity"], group=settings["group"], name=trial.run.name,
                      job_type="trial", config=config, tags=trial_tags(trial, settings), dir=settings["dir"],
                      mode=settings["mode"], id=trial_run_id(trial.key, settings), resume="allow" if resume else None,
                      reinit="create_new", settings=wandb.Settings(silent=True, console="off"))


def open_live_run(trial_dir: Path):
    """Rank 0 of a sweep trial: the trial's W&B run, opened before training so the loss curve is
    logged while it trains (``emray.sweep.live.TrialProgress``). None outside a sweep or with W&B off."""
    from emray.sweep.spec import SweepSpec, Trial

    trial_dir = Path(trial_dir)
    sweep_dir = trial_dir.parent.parent
    if trial_dir.parent.name != "trials" or not (sweep_dir / "spec.json").exists() or not (trial_dir / "trial.json").exists():
        return None
    settings = wandb_settings(SweepSpec.model_validate_json((sweep_dir / "spec.json").read_text()), sweep_dir)
    if not settings["enabled"] or settings["mode"] == "disabled":
        return None
    return _trial_run(Trial.model_validate_json((trial_dir / "trial.json").read_text()), settings, resume=False)


def log_trial(trial, record: dict, trial_dir: Path, settings: dict) -> str | None:
    """Criteria, adapter (and the training curve, unless rank 0 logged it live) of one trial, into
    its W&B run; returns the run's local folder."""
    if not settings.get("enabled") or settings["mode"] == "disabled":
        return None
    import wandb

    from emray.sweep.live import read_progress

    live = bool((read_progress(trial_dir) or {}).get("wandb_live"))
    run = _trial_run(trial, settings, resume=live)
    try:
        metrics_file = trial_dir / "metrics.json"
        if metrics_file.exists() and not live:
            for entry in json.loads(metrics_file.read_text()).get("history", []):
                if "loss" in entry:
                    run.log({f"train/{k}": v for k, v in entry.items() if isinstance(v, (int, float))}, step=int(entry.get("step", 0)))
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                run.summary[key] = value
        adapter = trial_dir / "adapter"
        if settings.get("log_adapters", True) and (adapter / "adapter_config.json").exists():
            artifact = wandb.Artifact(f"adapter-{trial.key}", type="model",
                                      metadata={"label": trial.label, "seed": trial.run.seed, "model": trial.run.model.name,
                                                **{k: record.get(k) for k in OBJECTIVES}})
            artifact.add_dir(str(adapter))
            run.log_artifact(artifact, aliases=[f"seed{trial.run.seed}"])
        return str(Path(run.dir).parent)
    finally:
        run.finish()


ARM_COLUMNS = ["arm", "defense", "model", "seeds", "is_pareto", "dominated_by"]


def arm_table(arms: list[dict]):
    """The per-arm results as a wandb.Table: each criterion with its low/high interval ends, then the
    unscored shares (the rates are over scored answers). Returns the table and the criteria in it."""
    import wandb

    from emray.sweep.pareto import UNSCORED

    present = lambda k: any(isinstance(a.get(k), (int, float)) for a in arms)  # noqa: E731
    rates = [k for k in OBJECTIVES if present(k)]
    shown = rates + [k for k in UNSCORED if present(k)]
    columns = ARM_COLUMNS + [c for k in shown for c in (k, f"{k}_lo", f"{k}_hi")]
    data = [[a["short_label"], a["family"], a["model"], a["n_seeds"], bool(a["is_pareto"]), ", ".join(a["dominated_by"]),
             *[a.get(c) for k in shown for c in (k, f"{k}_lo", f"{k}_hi")]] for a in arms]
    return wandb.Table(columns=columns, data=data), rates


def log_summary(spec, sweep_dir: Path, rows: list[dict]) -> str | None:
    """The sweep's summary run: per-arm and per-trial tables, native scatter charts, the PNG plots."""
    settings = wandb_settings(spec, sweep_dir)
    if not settings["enabled"] or settings["mode"] == "disabled":
        return None
    import wandb

    from emray.sweep.pareto import arm_rows

    arms = arm_rows(rows)
    tags = [f"sweep:{spec.name}", f"scenario:{scenario(spec)}", "summary", *settings["tags"]]
    run = _init(settings, f"{spec.name}-summary", "summary", spec.model_dump(mode="json", by_alias=True), tags)
    try:
        table, rates = arm_table(arms)
        charts = {f"pareto/{x}__{y}": wandb.plot.scatter(table, x, y, title=f"{x} vs {y} (arm means)")
                  for x, y in itertools.combinations(rates, 2)}
        run.log({"pareto_arms": table, **charts})
        columns = ["short_label", "label", "model", "seed", "trial_key", *OBJECTIVES, "in_domain_incoherence",
                   "general_unscored_rate", "in_domain_unscored_rate", "is_pareto"]
        run.log({"pareto_table": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})
        for png in sorted((sweep_dir / "plots").glob("*.png")):
            run.log({f"plots/{png.stem}": wandb.Image(str(png))})
        run.summary["num_trials"] = len(rows)
        run.summary["num_arms"] = len(arms)
        run.summary["num_pareto_arms"] = sum(bool(a["is_pareto"]) for a in arms)
        return str(Path(run.dir).parent)
    finally:
        run.finish()
        print(save_workspace(settings, rates if arms else list(OBJECTIVES)), flush=True)


def save_workspace(settings: dict, rates: list[str]) -> str:
    """Online: a saved W&B workspace for the sweep's group (loss curves, criteria scatter, parallel
    coordinates over the arms' hyperparameters). Offline or disabled: skipped, with the reason."""
    if not settings.get("workspace", True):
        return "[emray] W&B workspace: off (wandb.workspace: false)"
    if settings["mode"] != "online":
        return (f"[emray] W&B workspace: skipped ({settings['mode']} runs; a workspace lives on the W&B server). "
                f"Upload with `wandb sync {settings['dir']}/wandb/offline-run-*`.")
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        return "[emray] W&B workspace: skipped (pip install wandb-workspaces to have it created)"
    try:
        import wandb

        entity = settings["entity"] or wandb.Api().default_entity
        pairs = list(itertools.combinations(rates, 2))
        workspace = ws.Workspace(
            name=f"emray {settings['group']}", entity=entity, project=settings["project"],
            sections=[
                ws.Section(name="Criteria", is_open=True, panels=[
                    *[wr.ScatterPlot(x=x, y=y) for x, y in pairs],
                    wr.ParallelCoordinatesPlot(columns=[wr.ParallelCoordinatesPlotColumn(metric=wr.Config("defense")),
                                                        *[wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(r)) for r in rates]]),
                ]),
                ws.Section(name="Training", is_open=True, panels=[wr.LinePlot(x="Step", y=["train/loss"])]),
            ],
            runset_settings=ws.RunsetSettings(query=settings["group"], groupby=[ws.Config("defense")]),
        )
        workspace.save()
        return f"[emray] W&B workspace saved: {workspace.url}"
    except Exception as err:  # a workspace is a convenience: say why, do not fail a finished sweep
        return f"[emray] W&B workspace: not created ({type(err).__name__}: {err})"
