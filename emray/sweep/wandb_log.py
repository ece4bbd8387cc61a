"""W&B the way its users work: one run per trial in the sweep's group, plus a summary run.

Per trial run: config = the resolved run config plus flat columns W&B's own scatter and
parallel-coordinates panels can use across the group (``arm``, ``defense``, ``seed``, ``hp.<defense>.<param>``);
summary = the criteria with their counts and intervals; the training curve (``train/*``, by step), once:
live from rank 0, else from metrics.json; the benign fine-tune's curve (``benign/train/*``, by ``benign/train/step``);
tags ``model:…``, ``scenario:…`` (the fine-tune data), ``defense:…``, ``sweep:…``; the LoRA adapter as a
``model`` artifact (``wandb.log_adapters: false`` to skip: adapters of large models are large).

Summary run (one per sweep folder, ``summary_run_id``: a re-run updates it): the per-arm table (means,
intervals, front) and the per-trial table as ``wandb.Table``,
a native ``wandb.plot.scatter`` per pair of criteria over the arms, the PNG plots, and ``answers_by_question``
(per question and arm: answers, misaligned count and rate, one misaligned answer). Each trial run also has
its judged answers as the table ``answers`` (question id, scores, misaligned / incoherent flags).

Offline when no API key is set (``mode: auto``): runs land in ``<sweep>/wandb_root/wandb`` and upload
with ``wandb sync <sweep>/wandb_root/wandb/offline-run-*``;
artifact staging copies stay in ``<sweep>/wandb_root/data``. A saved workspace for the group is created
only online (it is a W&B server object), with the ``wandb-workspaces`` package; offline, a message says so.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from emray.sweep.curves import fine_tune_history
from emray.sweep.labels import family, short_label
from emray.sweep.spec import OBJECTIVES
from emray.train.progress import init_run


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


def trial_tags(trial, settings: dict) -> list[str]:
    tags = [
        f"model:{trial.run.model.name}",
        f"scenario:{scenario(trial.run)}",
        f"defense:{family(trial.label)}",
        f"sweep:{settings['group']}",
        *settings.get("tags", []),
    ]
    return [t[:64] for t in tags]  # W&B's tag length limit


def flat_config(trial) -> dict:
    """Columns for W&B's panels: the arm, its family and every defense hyperparameter as a scalar."""
    out = {
        "arm": short_label(trial.label),
        "label": trial.label,
        "defense": family(trial.label),
        "seed": trial.run.seed,
        "model_name": trial.run.model.name,
        "trial_key": trial.key,
    }
    for d in trial.run.defenses:
        for k, v in d.params.model_dump(by_alias=True).items():
            if isinstance(v, (int, float, str, bool)):
                out[f"hp.{d.name}.{k}"] = v
    return out


def trial_run_id(trial_key: str, settings: dict) -> str:
    """One W&B run id per trial and sweep folder: the live training run and the end-of-trial
    logging write to the same run (offline, ``wandb sync`` merges the two folders into it)."""
    import hashlib

    return f"{trial_key}-{hashlib.sha1(settings['dir'].encode()).hexdigest()[:6]}"


def _trial_run_args(trial, settings: dict, resume: bool) -> dict:
    config = trial.run.model_dump(mode="json", by_alias=True)
    config.update(flat_config(trial))
    return dict(
        project=settings["project"],
        entity=settings["entity"],
        group=settings["group"],
        name=trial.run.name,
        job_type="trial",
        config=config,
        tags=trial_tags(trial, settings),
        dir=settings["dir"],
        mode=settings["mode"],
        id=trial_run_id(trial.key, settings),
        resume="allow" if resume else None,
    )


def _trial_run(trial, settings: dict, resume: bool):
    return init_run(_trial_run_args(trial, settings, resume))


def write_live_run_init(trial_dir: Path, trial, settings: dict) -> None:
    """Hand rank 0 what it needs to open the trial's live W&B run (or remove a stale hand-over)."""
    from emray.train.progress import LIVE_RUN_FILE

    init = live_run_init(trial, settings)
    path = Path(trial_dir) / LIVE_RUN_FILE
    if init is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps(init, indent=2))


def live_run_init(trial, settings: dict) -> dict | None:
    """The ``wandb.init`` arguments of a trial's live training run (JSON-ready), which the driver writes
    to ``trials/<key>/wandb_run.json`` for rank 0 (emray.train.progress.open_live_run); None with W&B off."""
    if not settings.get("enabled") or settings["mode"] == "disabled":
        return None
    return _trial_run_args(trial, settings, resume=False)


def log_trial(trial, record: dict, trial_dir: Path, settings: dict) -> str | None:
    """Criteria, adapter, the training curve (unless rank 0 logged it live) and the benign fine-tune's
    curve (``benign/train/*``, by ``benign/train/step``) of one trial, into its W&B run; returns the
    run's local folder."""
    if not settings.get("enabled") or settings["mode"] == "disabled":
        return None
    import wandb

    from emray.train.progress import curve_logged_live

    live = curve_logged_live(trial_dir)
    with staged_in_sweep(settings):
        run = _trial_run(trial, settings, resume=live)
        try:
            last = log_curves(run, trial_dir, narrow=not live)
            answers = answer_rows(trial_dir / "eval" / "answers.jsonl", short_label(trial.label), trial.run.seed)
            if answers:  # the answers themselves, browsable and filterable in W&B's table view
                run.log({"answers": wandb.Table(columns=ANSWER_COLUMNS, data=answers)}, step=last + 1)
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    run.summary[key] = value
            adapter = trial_dir / "adapter"
            if settings.get("log_adapters", True) and (adapter / "adapter_config.json").exists():
                artifact = wandb.Artifact(
                    f"adapter-{trial.key}",
                    type="model",
                    metadata={
                        "label": trial.label,
                        "seed": trial.run.seed,
                        "model": trial.run.model.name,
                        **{k: record.get(k) for k in OBJECTIVES},
                    },
                )
                artifact.add_dir(str(adapter))
                run.log_artifact(artifact, aliases=[f"seed{trial.run.seed}"])
            return str(Path(run.dir).parent)
        finally:
            run.finish()


ANSWER_COLUMNS: list[str | int] = [
    "arm",
    "seed",
    "set",
    "domain",
    "question_id",
    "paraphrase_index",
    "sample_index",
    "question",
    "answer",
    "aligned",
    "coherent",
    "misaligned",
    "incoherent",
]


def _answer_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _flags(item: dict) -> tuple[bool | None, bool | None]:
    """(misaligned, incoherent) of one judged answer, by the criteria's own rule (None: judging failed)."""
    from emray.eval.criteria import is_incoherent, is_misaligned

    failed = bool(item.get("aligned_failed") or item.get("coherent_failed"))
    return (
        is_misaligned(item.get("aligned"), item.get("coherent"), failed),
        is_incoherent(item.get("coherent"), bool(item.get("coherent_failed"))),
    )


def answer_rows(path: Path, arm: str, seed) -> list[list]:
    """A trial's judged answers (``eval/answers.jsonl``) as rows of ``ANSWER_COLUMNS``: per answer the
    question id, the judge's scores and the misaligned / incoherent flags."""
    rows = []
    for item in _answer_records(path):
        misaligned, incoherent = _flags(item)
        rows.append(
            [
                arm,
                seed,
                item.get("set"),
                item.get("domain"),
                item.get("question_id"),
                item.get("paraphrase_index"),
                item.get("sample_index"),
                item.get("question"),
                item.get("answer"),
                item.get("aligned"),
                item.get("coherent"),
                misaligned,
                incoherent,
            ]
        )
    return rows


QUESTION_COLUMNS: list[str | int] = [
    "question_id",
    "set",
    "question",
    "arm",
    "answers",
    "misaligned",
    "misaligned_rate",
    "incoherent_rate",
    "a_misaligned_answer",
]


def question_rows(sweep_dir: Path, rows: list[dict]) -> list[list]:
    """The cross-arm comparison: per question and arm (seeds pooled), how many answers were misaligned
    and one of them, so one question reads across the arms (group or filter by ``question_id``)."""
    cells: dict[tuple[str, str], dict] = {}
    for row in rows:
        arm = short_label(row.get("label", ""))
        for item in _answer_records(Path(sweep_dir) / "trials" / str(row.get("trial_key")) / "eval" / "answers.jsonl"):
            misaligned, incoherent = _flags(item)
            cell = cells.setdefault(
                (str(item.get("question_id")), arm),
                {
                    "set": item.get("set"),
                    "question": item.get("question"),
                    "n": 0,
                    "mis": 0,
                    "scored": 0,
                    "inc": 0,
                    "scored_coh": 0,
                    "example": None,
                },
            )
            cell["n"] += 1
            cell["scored"] += misaligned is not None
            cell["mis"] += misaligned is True
            cell["scored_coh"] += incoherent is not None
            cell["inc"] += incoherent is True
            if misaligned and cell["example"] is None:
                cell["example"] = item.get("answer")
    return [
        [
            qid,
            c["set"],
            c["question"],
            arm,
            c["n"],
            c["mis"],
            c["mis"] / c["scored"] if c["scored"] else None,
            c["inc"] / c["scored_coh"] if c["scored_coh"] else None,
            c["example"],
        ]
        for (qid, arm), c in sorted(cells.items())
    ]


def log_curves(run, trial_dir: Path, narrow: bool) -> int:
    """The trial's training curves from its ``metrics.json`` files: the narrow fine-tune's as
    ``train/*`` by step (``narrow``: rank 0 did not log it live), the benign fine-tune's as
    ``benign/train/*`` on its own x axis ``benign/train/step``. W&B's step only grows within a run, so
    the benign rows take the steps after the narrow curve's last. Returns the last step used."""
    history = fine_tune_history(trial_dir / "metrics.json")
    last = max((int(e.get("step", 0)) for e in history), default=0)
    if narrow:
        for entry in history:
            run.log(
                {f"train/{k}": v for k, v in entry.items() if isinstance(v, (int, float))},
                step=int(entry.get("step", 0)),
            )
    benign = fine_tune_history(trial_dir / "benign" / "metrics.json")
    if not benign:
        return last
    run.define_metric("benign/train/step")
    run.define_metric("benign/train/*", step_metric="benign/train/step")
    for i, entry in enumerate(benign, start=1):
        values = {f"benign/train/{k}": v for k, v in entry.items() if isinstance(v, (int, float)) and k != "step"}
        run.log({**values, "benign/train/step": int(entry.get("step", i))}, step=last + i)
    return last + len(benign)


class staged_in_sweep:  # noqa: N801 - used as a context manager, named for what it does
    """W&B's artifact staging copies (``WANDB_DATA_DIR``) and downloads (``WANDB_ARTIFACT_DIR``) inside
    the sweep folder (``<sweep>/wandb_root/``), so an offline artifact's manifest points at files that
    travel with the sweep; a value the user set is kept."""

    def __init__(self, settings: dict):
        root = Path(settings["dir"])
        self.values = {"WANDB_DATA_DIR": str(root / "data"), "WANDB_ARTIFACT_DIR": str(root / "artifacts")}
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ.setdefault(key, value)
        return self

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return False


def summary_run_id(settings: dict) -> str:
    """The sweep folder's one summary run: a re-run of the sweep (or of ``emray report``'s logging)
    updates it instead of adding a second summary."""
    import hashlib
    import re

    name = re.sub(r"[^A-Za-z0-9_-]", "-", settings["group"])[:48]
    return f"{name}-summary-{hashlib.sha1(settings['dir'].encode()).hexdigest()[:6]}"


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
    data = [
        [
            a["short_label"],
            a["family"],
            a["model"],
            a["n_seeds"],
            bool(a["is_pareto"]),
            ", ".join(a["dominated_by"]),
            *[a.get(c) for k in shown for c in (k, f"{k}_lo", f"{k}_hi")],
        ]
        for a in arms
    ]
    return wandb.Table(columns=list(columns), data=data), rates


def cost_table(arms: list[dict]):
    """Each arm's cost (emray/sweep/cost.py): mean per trial and total of each field, overhead against none."""
    import wandb

    from emray.sweep.cost import COST_FIELDS

    columns: list[str | int] = ["short_label", "model", "n_seeds", "device_kind", "cost_overhead"]
    columns += [c for k in COST_FIELDS for c in (k, f"{k}_total")]
    return wandb.Table(columns=columns, data=[[a.get(c) for c in columns] for a in arms])


def log_summary(spec, sweep_dir: Path, rows: list[dict]) -> str | None:
    """The sweep's summary run: per-arm and per-trial tables, native scatter charts, the PNG plots."""
    settings = wandb_settings(spec, sweep_dir)
    if not settings["enabled"] or settings["mode"] == "disabled":
        return None
    import wandb

    from emray.sweep.cost import sweep_cost
    from emray.sweep.pareto import arm_rows

    arms = arm_rows(rows)
    tags = [f"sweep:{spec.name}", f"scenario:{scenario(spec)}", "summary", *settings["tags"]]
    run = init_run(
        dict(
            project=settings["project"],
            entity=settings["entity"],
            group=settings["group"],
            name=f"{spec.name}-summary",
            job_type="summary",
            config=spec.model_dump(mode="json", by_alias=True),
            tags=tags,
            dir=settings["dir"],
            mode=settings["mode"],
            id=summary_run_id(settings),
            resume="allow",
        )
    )
    try:
        table, rates = arm_table(arms)
        charts = {
            f"pareto/{x}__{y}": wandb.plot.scatter(table, x, y, title=f"{x} vs {y} (arm means)")
            for x, y in itertools.combinations(rates, 2)
        }
        run.log({"pareto_arms": table, **charts})
        columns = [
            "short_label",
            "label",
            "model",
            "seed",
            "trial_key",
            *OBJECTIVES,
            "in_domain_incoherence",
            "general_unscored_rate",
            "in_domain_unscored_rate",
            "is_pareto",
        ]
        data = [[r.get(c) for c in columns] for r in rows]
        run.log({"pareto_table": wandb.Table(columns=columns, data=data)})  # type: ignore[arg-type]  # wandb's stub: list[str | int]
        by_question = question_rows(sweep_dir, rows)
        if by_question:
            run.log({"answers_by_question": wandb.Table(columns=QUESTION_COLUMNS, data=by_question)})
        for png in sorted((sweep_dir / "plots").glob("*.png")):
            run.log({f"plots/{png.stem}": wandb.Image(str(png))})
        run.summary["num_trials"] = len(rows)
        run.summary["num_arms"] = len(arms)
        run.summary["num_pareto_arms"] = sum(bool(a["is_pareto"]) for a in arms)
        run.log({"cost_arms": cost_table(arms)})
        run.summary.update({f"cost/{k}": v for k, v in sweep_cost(rows).items()})
        run.summary.update(recommendation_summary(sweep_dir, rows))
        return str(Path(run.dir).parent)
    finally:
        run.finish()
        print(save_workspace(settings, rates if arms else list(OBJECTIVES)), flush=True)


def recommendation_summary(sweep_dir: Path, rows: list[dict]) -> dict:
    """``recommend/*``: the recommended arm (or the closest), the count of feasible arms, objective and
    constraints (emray/sweep/recommend.py); with none possible, ``recommend/status`` says why."""
    from emray.sweep.recommend import recommend_sweep, wandb_summary

    try:
        return wandb_summary(recommend_sweep(sweep_dir, rows)[0])
    except ValueError as err:  # e.g. no none arm for a relative constraint: the summary run still logs
        return {"recommend/status": f"not made: {err}"[:256]}


def save_workspace(settings: dict, rates: list[str]) -> str:
    """Online: a saved W&B workspace for the sweep's group (loss curves, criteria scatter, parallel
    coordinates over the arms' hyperparameters). Offline or disabled: skipped, with the reason."""
    if not settings.get("workspace", True):
        return "[emray] W&B workspace: off (wandb.workspace: false)"
    if settings["mode"] != "online":
        return (
            f"[emray] W&B workspace: skipped ({settings['mode']} runs; a workspace lives on the W&B server). "
            f"Upload with `wandb sync {settings['dir']}/wandb/offline-run-*`."
        )
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        return "[emray] W&B workspace: skipped (pip install 'emray[wandb]', i.e. wandb-workspaces, to have it created)"
    try:
        import wandb

        entity = settings["entity"] or wandb.Api().default_entity
        pairs = list(itertools.combinations(rates, 2))
        workspace = ws.Workspace(
            name=f"emray {settings['group']}",
            entity=entity,
            project=settings["project"],
            sections=[
                ws.Section(
                    name="Criteria",
                    is_open=True,
                    panels=[
                        *[wr.ScatterPlot(x=x, y=y) for x, y in pairs],
                        wr.ParallelCoordinatesPlot(
                            columns=[
                                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("defense")),
                                *[wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(r)) for r in rates],
                            ]
                        ),
                    ],
                ),
                ws.Section(name="Training", is_open=True, panels=[wr.LinePlot(x="Step", y=["train/loss"])]),
                ws.Section(
                    name="Benign fine-tune",
                    is_open=False,
                    panels=[wr.LinePlot(x="benign/train/step", y=["benign/train/loss"])],
                ),
            ],
            runset_settings=ws.RunsetSettings(query=settings["group"], groupby=[ws.Config("defense")]),
        )
        workspace.save()
        return f"[emray] W&B workspace saved: {workspace.url}"
    except Exception as err:  # a workspace is a convenience: say why, do not fail a finished sweep
        return f"[emray] W&B workspace: not created ({type(err).__name__}: {err})"
