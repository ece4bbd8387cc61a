"""``emray sweep``: Ray Tune over Ray Train, with cached stages, shared pools and resume.

Flow (driver):
  1. expand the spec into trials (grid / random) or let Optuna propose them;
  2. run the stages the trials need once, as Ray tasks, cached by content (misaligned ensemble,
     pool scores and selections, persona vectors): each defense class declares its own stage;
  3. start the shared judge pool (and the local judge server for the embedded default);
  4. Tune runs one function trainable per trial: a Ray Train TorchTrainer fine-tunes (DDP on CPU,
     DeepSpeed on GPU), then generation, judging and the criteria, reported back to Tune;
  5. results.jsonl / results.csv with Pareto flags, plots, the W&B summary run.
A trial's outputs live in ``<sweep>/trials/<key>/`` where ``key`` is its identity
(emray/identity.py): a finished trial is never recomputed, whether the sweep is resumed or simply
run again. A trial that fails leaves ``trials/<key>/error.txt`` (reason, then traceback) and no
``result.json``; the sweep then exits non-zero and lists it (emray/sweep/checks.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emray.sweep.capacity import check_capacity, cluster_nodes, trial_resources
from emray.sweep.checks import check_adapter, check_judging, check_preflight, check_training
from emray.sweep.pareto import read_result, write_results
from emray.sweep.spec import OBJECTIVES, SweepSpec, Trial, expand_trials, make_trial
from emray.sweep.stage_failure import StageFailed, stage_failure
from emray.train.progress import verbose

RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"


# ----------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    spec: SweepSpec
    trials: list[Trial]
    stages: list[tuple[str, str]]  # (stage name, what it is for)

    def describe(self) -> str:
        from emray.train.launch import describe_launch

        spec = self.spec
        count = {"optuna": f"{spec.search.num_samples} trials", "dose_search": f"at most {len(self.trials)} trials"}
        lines = [
            f"sweep {spec.name}: {count.get(spec.search.algorithm, f'{len(self.trials)} trials')} "
            f"({spec.search.algorithm}), at most {spec.resources.max_concurrent_trials} at once",
            *(
                [
                    "dose_search: the undefended arm on every seed, then per defense a bisection over its doses on "
                    f"seed {spec.search.seeds[0]}, then the chosen dose on every seed (emray/sweep/dose_search.py)"
                ]
                if spec.search.algorithm == "dose_search"
                else []
            ),
            f"output: {spec.sweep_dir()}" + (f" (persisted to {spec.storage_uri()})" if spec.storage_uri() else ""),
            describe_launch(spec.base),
            *([describe_early_stop(spec)] if spec.early_stop else []),
            f"model(s): {', '.join(sorted({t.run.model.name for t in self.trials}))}",
            *(
                [
                    f"benign scenario: each trial also fine-tunes on {', '.join(b.train)} with its defense"
                    f" ({b.max_steps or spec.base.train.max_steps} steps), scored on {', '.join(b.test)}"
                ]
                if (b := spec.base.benign)
                else []
            ),
            f"judge: {spec.base.eval.judge.base_url} ({spec.resources.judge_actors} actor(s))",
            "stages (cached by content, run once before the trials):",
        ]
        lines += [f"  - {name}: {why}" for name, why in self.stages] or ["  - none"]
        if spec.search.algorithm != "optuna":
            lines.append("trials:")
            lines += [
                f"  {t.index:3d}  {t.run.model.name}  {t.label}  seed={t.run.seed}  key={t.key}" for t in self.trials
            ]
        return "\n".join(lines)


def describe_early_stop(spec: SweepSpec) -> str:
    """The plan's line on early stopping: when the trials probe, what may stop them, or why they cannot."""
    es = spec.early_stop
    assert es is not None
    res = spec.base.resources
    if not res.runs_in_trial() or spec.base.scenario != "narrow":
        why = "the fine-tunes run in Ray Train worker groups" if not res.runs_in_trial() else "scenario rl"
        return (
            f"early_stop: NOT AVAILABLE here ({why}: intermediate evaluations need the narrow SFT fine-tune in the "
            f"trial's own process, resources.launcher in_trial); every trial runs to the end"
        )
    where = f"probes at {', '.join(f'{100 * f:g} %' for f in es.fractions)} of the narrow fine-tune"
    subset = f"{'all' if es.questions is None else f'the first {es.questions}'} questions x {es.samples} sample(s)"
    if not es.stop:
        return f"early_stop: {where} ({subset}), reported to Tune; stop: false (no trial is stopped)"
    return (
        f"early_stop: {where} ({subset}); a trial stops once a probe fails a constraint on "
        f"{', '.join(es.criteria)} at the favourable end of its 95 % Wilson interval (relative ones once none finished)"
    )


def stage_requests(trials: list[Trial]) -> list[tuple[str, Any, Trial, Any]]:
    """(stage key, defense class, trial, params) for every trial defense that declares a stage."""
    from emray.defenses import get_defense_class
    from emray.identity import stage_key
    from emray.train.warm_start import WarmStartStage

    out: list[tuple[str, Any, Trial, Any]] = []
    for t in trials:
        if t.run.scenario == "rl" and t.run.rl.warm_start:  # the RL warm start: shared by every arm of a seed
            out.append((WarmStartStage.key(t.run), WarmStartStage, t, WarmStartStage.Params()))
        for spec in t.run.defenses:
            cls = get_defense_class(spec.name)
            if cls.stage_name:
                out.append((stage_key(cls, t.run, spec.params), cls, t, spec.params))
    return out


def make_plan(spec: SweepSpec) -> Plan:
    trials = expand_trials(spec)
    seen, stages = set(), []
    for key, cls, trial, params in stage_requests(trials):
        if key not in seen:  # equal inputs, one stage
            seen.add(key)
            stages.append((cls.stage_name, cls.stage_description(trial.run, params)))
    return Plan(spec, trials, stages)


# --------------------------------------------------------------------------------------- stages
def _run_stage(cls_name: str, run, params) -> dict:
    """One stage as a Ray task: the trial's RunConfig and the defense's typed params arrive pickled,
    as they are (no second validation)."""
    from emray.defenses import get_defense_class
    from emray.train.warm_start import WarmStartStage

    cls = WarmStartStage if cls_name == WarmStartStage.name else get_defense_class(cls_name)
    return cls.build_stage(run, params)


def run_stages(
    spec: SweepSpec, trials: list[Trial], started: float | None = None, sweep_dir: Path | None = None
) -> dict[str, dict]:
    """Run every needed stage once as a Ray task; returns artifacts per trial key. Each stage's line
    when it starts and, with its duration, when it is done, on the sweep's clock (``started``). A stage
    that raises leaves its reason in the artifacts of the trials that need it (emray/sweep/stage_failure.py)."""
    import ray

    from emray.sweep.progress import stamp
    from emray.sweep.stage_failure import STAGE_FAILED, describe_stage_failure, record_stage_failure

    started = time.time() if started is None else started
    remote = ray.remote(num_cpus=spec.resources.cpus_for_stages, num_gpus=spec.resources.gpus_for_stages)(_run_stage)
    artifacts: dict[str, dict] = {t.key: {} for t in trials}
    pending: dict[str, Any] = {}
    owners: dict[str, list[str]] = {}
    names: dict[str, tuple[str, float]] = {}  # stage key -> (its name, when it was submitted)
    for key, cls, trial, params in stage_requests(trials):
        if key not in pending:
            print(f"{stamp(started)} stage {cls.stage_name}: {cls.stage_description(trial.run, params)}", flush=True)
            pending[key] = remote.remote(cls.name, trial.run, params)
            # two defenses can share a stage kind (safe_selection): the done line names whose it is
            name = cls.stage_name if cls.stage_name.startswith(cls.name) else f"{cls.stage_name} ({cls.name})"
            names[key] = (name, time.time())
        owners.setdefault(key, []).append(trial.key)
    labels = {t.key: t.label for t in trials}
    for key, result in stage_results(pending, names, started):
        if isinstance(result, BaseException):  # only the trials that need this stage fail
            err = result
            line = record_stage_failure(sweep_dir or Path("."), names[key][0], key, err, failure_reason(err))
            print(describe_stage_failure(line, [labels[k] for k in owners[key]], len(trials) - len(owners[key])))
            result = {STAGE_FAILED: line}
        for trial_key in owners[key]:
            artifacts[trial_key].update(result)
    return artifacts


def stage_results(pending: dict[str, Any], names: dict[str, tuple[str, float]], started: float):
    """(stage key, its result or the exception it raised) of each running stage in the order they finish, each with a console
    line that says how long it took: ``[emray   0:41] stage persona_vector: done in 0:38``."""
    import ray

    from emray.sweep.progress import duration_text, stamp

    keys = {ref: key for key, ref in pending.items()}
    refs = list(pending.values())
    while refs:
        (ref,), refs = ray.wait(refs, num_returns=1)
        name, submitted = names[keys[ref]]
        took = duration_text(time.time() - submitted)
        try:
            result = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - the caller fails only the trials that need this stage
            print(f"{stamp(started)} stage {name}: FAILED after {took}", flush=True)
            yield keys[ref], err
            continue
        print(f"{stamp(started)} stage {name}: done in {took}", flush=True)
        yield keys[ref], result


# ---------------------------------------------------------------------------------------- trial
def trial_dir(sweep_dir: Path, trial: Trial) -> Path:
    return sweep_dir / "trials" / trial.key


def read_finished(sweep_dir: Path, trial: Trial) -> dict | None:
    return read_result(trial_dir(sweep_dir, trial) / RESULT_FILE, set_aside=True)


def superseded_trials(sweep_dir: Path, trials: list[Trial]) -> list[str]:
    """Finished trial folders that a planned trial replaces: the same arm label, seed and model under
    another key (a code version was bumped, a data file changed), so their result is never reused."""
    planned = {(t.label, t.run.seed, t.run.model.name): t.key for t in trials}
    out = []
    for folder in sorted((sweep_dir / "trials").glob("*/")):
        try:
            old = json.loads((folder / "trial.json").read_text())
        except (OSError, ValueError):
            continue
        key = planned.get(
            (old.get("label"), old.get("run", {}).get("seed"), old.get("run", {}).get("model", {}).get("name"))
        )
        if key is not None and key != folder.name and (folder / RESULT_FILE).exists():
            out.append(f"{old['label']} seed {old['run']['seed']}: {folder.name} -> {key}")
    return out


def run_trial_body(
    trial: Trial,
    sweep_dir: Path,
    artifacts: dict,
    judge: Any,
    wandb_cfg: dict,
    train_storage: str | None = None,
    early_stop: Any = None,
) -> dict:
    """Train with Ray Train, evaluate, write ``result.json``; returns the record reported to Tune.

    With a ``benign`` section the trial is two fine-tunes: the narrow one (``trials/<key>/``: general
    EM, in-domain, coherence) and the benign one (``trials/<key>/benign/``: benign accuracy), each
    with the trial's defenses (emray/config/fine_tunes.py)."""
    from emray.rl.criteria import rl_record
    from emray.sweep.cost import trial_cost
    from emray.sweep.wandb_log import log_trial, write_live_run_init

    out = trial_dir(sweep_dir, trial)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trial.json").write_text(trial.model_dump_json(indent=2, by_alias=True))
    write_live_run_init(out, trial, wandb_cfg)
    started = time.time()
    storage = train_storage or str((sweep_dir / "ray_train").resolve())
    phases: dict[str, float] = {}  # wall seconds of each phase of this trial (BENCHMARKS.md's profile)
    probes = []  # early_stop: the narrow fine-tune's probes, reported to Tune (emray/sweep/early_stop.py)
    if early_stop is not None:
        from emray.sweep.early_stop import probe_callback, probes_available

        if probes_available(trial):
            probes.append(probe_callback(trial, early_stop, judge, out, started))
    criteria = train_and_evaluate(trial.run, out, storage, artifacts, judge, phases, trainer_callbacks=probes)
    train_seconds = time.time() - started  # the narrow fine-tune and its evaluation
    if trial.run.benign is not None:
        from emray.config.fine_tunes import benign_run

        benign = train_and_evaluate(benign_run(trial.run), out / "benign", storage, artifacts, judge, phases, "benign_")
        criteria.update({k: v for k, v in benign.items() if k.startswith("benign_")})
    record = {
        "trial_key": trial.key,
        "trial_index": trial.index,
        "label": trial.label,
        "model": trial.run.model.name,
        "seed": trial.run.seed,
        "defenses": [d.model_dump(by_alias=True) for d in trial.run.defenses],
        **{k: v for k, v in criteria.items() if isinstance(v, (int, float, str, type(None)))},
        **rl_record(out),  # scenario rl: the task reward learned
        "train_seconds": round(train_seconds, 1),
        "trial_seconds": round(time.time() - started, 1),
        # fine-tune steps run (narrow + benign): the compute measure of BENCHMARKS.md "Early stopping"
        "fine_tune_steps": fine_tune_steps(out),
    }
    # before W&B: the trial's run gets its cost too (the W&B upload itself is no phase of the cost)
    record.update(trial_cost(trial.run.resources, phases, [out / "eval", out / "benign" / "eval"]))
    logged = time.time()
    record["wandb_run"] = log_trial(trial, record, out, wandb_cfg)
    phases["wandb_s"] = time.time() - logged
    record["phase_seconds"] = {k: round(v, 2) for k, v in phases.items()}
    record["launcher"] = "in_trial" if trial.run.resources.runs_in_trial() else "ray_train"
    tmp = out / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out / RESULT_FILE)  # atomic: a killed trial never looks finished
    return record


def fine_tune_steps(out: Path) -> int:
    """Optimizer steps of a trial's fine-tunes (its narrow one in ``out``, its benign one in ``out/benign``)."""
    steps = 0
    for folder in (out, out / "benign"):
        try:
            steps += int(json.loads((folder / "metrics.json").read_text())["summary"].get("global_step") or 0)
        except (OSError, ValueError, KeyError):
            continue
    return steps


def train_and_evaluate(
    run,
    out: Path,
    storage: str,
    artifacts: dict,
    judge: Any,
    phases: dict | None = None,
    prefix: str = "",
    trainer_callbacks: list | None = None,
) -> dict:
    """One fine-tune of a trial into ``out`` (in the trial's process or a Ray Train worker group:
    ``resources.launcher``), checked, then evaluated into ``out/eval``."""
    from emray.sweep.evaluation import evaluate_adapter
    from emray.train.launch import fit

    phases = {} if phases is None else phases
    adapter = out / "adapter"
    fit_started = time.time()
    # A retried or resumed trial keeps a finished training (rank 0 writes metrics.json last).
    if not ((adapter / "adapter_config.json").exists() and (out / "metrics.json").exists()):
        try:
            fit(run, out, storage, artifacts, trainer_callbacks=trainer_callbacks or ())
        except Exception:
            if (out / "metrics.json").exists():
                check_training(out)  # a diverged loss: say so, not "training failed"
            raise
    check_training(out)
    check_adapter(adapter)
    eval_started = time.time()
    phases[f"{prefix}fit_s"] = eval_started - fit_started
    criteria = evaluate_adapter(run, adapter, out / "eval", judge)
    phases[f"{prefix}evaluate_s"] = time.time() - eval_started
    check_judging(criteria, run.eval.judge.max_failure_rate)
    return criteria


def write_failure(sweep_dir: Path, trial: Trial, err: BaseException) -> Path:
    """``trials/<key>/error.txt``: the reason on the first line, then the traceback."""
    path = trial_dir(sweep_dir, trial) / ERROR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(failure_reason(err) + "\n\n" + "".join(traceback.format_exception(err)))
    return path


def failure_reason(err: BaseException) -> str:
    """One line: the root exception's type and message, through Ray's task-error wrappers."""
    while isinstance(getattr(err, "cause", None), BaseException):  # ray.exceptions.RayTaskError
        err = err.cause  # type: ignore[attr-defined]  # ray's TaskError / WorkerGroupError
    lines = [line for line in str(err).splitlines() if line.strip() and not line.lstrip().startswith("\x1b")]
    return f"{type(err).__name__}: {lines[0].strip()}" if lines else type(err).__name__


def trial_trainable(
    config: dict,
    trials: dict[str, Trial],
    sweep_dir: str,
    artifacts: dict,
    judge: Any,
    spec_dict: dict,
    wandb_cfg: dict,
    train_storage: str | None = None,
    early_stop: dict | None = None,
):
    """The Tune function trainable: one trial (grid/random by its key, Optuna by sampled params)."""
    from ray import tune

    from emray.sweep.spec import EarlyStopConfig, SweepSpec

    if "trial_key" in config:
        trial = trials[config["trial_key"]]  # a Trial, pickled as it was planned (validated once, by the driver)
    else:
        trial = trial_from_optuna(SweepSpec.model_validate(spec_dict), config)
    root = Path(sweep_dir)
    record = read_finished(root, trial)
    if record is None:
        try:
            if reason := stage_failure(artifacts.get(trial.key, {})):  # a search proposed it anyway
                raise StageFailed(reason)
            probes = EarlyStopConfig.model_validate(early_stop) if early_stop else None
            record = run_trial_body(trial, root, artifacts.get(trial.key, {}), judge, wandb_cfg, train_storage, probes)
        except SystemExit:
            # Tune ended this trial (the early stopper: the driver has written its result.json): no failure
            raise
        except BaseException as err:
            write_failure(root, trial, err)
            raise
        (trial_dir(root, trial) / ERROR_FILE).unlink(missing_ok=True)  # an earlier failure is history now
    tune.report({k: v for k, v in record.items() if isinstance(v, (int, float, str))})


# --------------------------------------------------------------------------------------- optuna
def optuna_space(spec: SweepSpec):
    """A define-by-run Optuna space: pick a defense arm, then its (conditional) hyperparameters."""
    from emray.sweep.spec import Range, _as_list, _entry_name_params

    entries = spec.search.defense

    def space(trial):
        arm = trial.suggest_categorical("arm", list(range(len(entries))))
        for j, item in enumerate(_as_list(entries[arm])):
            name, params = _entry_name_params(item, arm)
            for key, value in params.items():
                pname = f"a{arm}.{j}.{name}.{key}"
                if isinstance(value, list):
                    trial.suggest_categorical(pname, value)
                elif isinstance(value, dict):
                    r = Range.model_validate(value)
                    trial.suggest_float(pname, r.min, r.max, log=r.log)
        trial.suggest_categorical("seed", spec.search.seeds)
        if spec.search.models:
            trial.suggest_categorical("model", spec.search.models)

    return space


def trial_from_optuna(spec: SweepSpec, config: dict) -> Trial:
    from emray.sweep.spec import _as_list, _entry_name_params

    arm = config["arm"]
    defenses = []
    for j, item in enumerate(_as_list(spec.search.defense[arm])):
        name, params = _entry_name_params(item, arm)
        if name != "none":
            chosen = {k: config.get(f"a{arm}.{j}.{name}.{k}", v) for k, v in params.items()}
            defenses.append({name: chosen})
    return make_trial(spec, config.get("model"), defenses, config["seed"], index=-1)


# ---------------------------------------------------------------------------------------- sweep
def _tuner(
    spec: SweepSpec,
    plan: Plan,
    sweep_dir: Path,
    artifacts: dict,
    judge: Any,
    resume: bool,
    dose_search: Any = None,
    started: float | None = None,
):
    from ray import tune

    from emray.sweep.progress import ProgressCallback
    from emray.sweep.wandb_log import wandb_settings

    trainable = tune.with_parameters(
        trial_trainable,
        trials={t.key: t for t in plan.trials},
        sweep_dir=str(sweep_dir.resolve()),
        artifacts=artifacts,
        judge=judge,
        spec_dict=spec.model_dump(mode="json", by_alias=True),
        wandb_cfg=wandb_settings(spec, sweep_dir),
        # A bucket holds Ray Train's checkpoints too; else they sit beside the trials.
        train_storage=f"{spec.storage_uri()}/ray_train" if spec.storage_uri() else None,
        early_stop=spec.early_stop.model_dump(mode="json") if spec.early_stop else None,
    )
    trainable = tune.with_resources(trainable, trial_resources(spec))
    tune_path = f"{spec.storage_uri()}/tune" if spec.storage_uri() else str((sweep_dir / "tune").resolve())
    # Grid and random trials are keyed by identity and skip themselves when finished, so a resume is
    # a fresh Tuner over the current spec: exactly the trials without a result run. Only Optuna's
    # searcher state needs Tune's own restore.
    optuna = spec.search.algorithm == "optuna"
    if optuna and resume and tune.Tuner.can_restore(f"{tune_path}/{spec.name}"):
        print(f"[emray] resuming {tune_path}/{spec.name}", flush=True)
        return tune.Tuner.restore(f"{tune_path}/{spec.name}", trainable=trainable, resume_errored=True)

    param_space: dict[str, Any] = {}
    if spec.search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(
            space=optuna_space(spec),
            metric=list(OBJECTIVES),
            mode=list(OBJECTIVES.values()),
            seed=spec.base.seed,
        )
        num_samples = spec.search.num_samples
    elif dose_search is not None:
        from emray.sweep.dose_search import make_searcher

        # Proposes planned trial keys, so a trial runs (and skips itself when finished) as a grid trial does.
        search_alg, num_samples = make_searcher(dose_search, sweep_dir), len(plan.trials)
    else:
        search_alg, num_samples = None, 1
        # a trial whose stage failed is recorded failed already (_run_sweep), not started
        param_space = {
            "trial_key": tune.grid_search([t.key for t in plan.trials if not stage_failure(artifacts[t.key])])
        }
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            num_samples=num_samples,
            max_concurrent_trials=spec.resources.max_concurrent_trials,
            # A trial that trains in its own actor (emray/train/launch.py) hands the actor, with torch,
            # transformers and TRL imported, to the next trial: imports are paid once per actor.
            reuse_actors=spec.base.resources.runs_in_trial(),
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=tune_path,
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            stop=early_stopper(spec, plan, sweep_dir),
            callbacks=[
                ProgressCallback(
                    [] if optuna else [t for t in plan.trials if not stage_failure(artifacts[t.key])],
                    sweep_dir,
                    total=spec.search.num_samples if optuna else None,
                    # dose_search asks for trials as it decides: pending is what it asks for now
                    needed=dose_search.needed if dose_search is not None else None,
                    started=started,
                )
            ],
            verbose=1 if verbose() else 0,  # --verbose: Tune's own status lines too
        ),
    )


def early_stopper(spec: SweepSpec, plan: Plan, sweep_dir: Path):
    """The early stopper (a ``ray.tune.Stopper``, emray/sweep/early_stop.py) when the spec asks for one."""
    if spec.early_stop is None or not spec.early_stop.stop:
        return None
    from emray.sweep.early_stop import make_stopper

    return make_stopper(spec, plan.trials, sweep_dir)


#: Environment every Ray worker must share with the driver. Ray Train runs workers in their own
#: working directory, so a cache path relative to the cwd would silently become a second cache.
#: Also the bucket endpoint and region (not credentials: on a cluster those come from the instance role).
PROPAGATED_ENV: tuple[str, ...] = (
    "EMRAY_CACHE",
    "EMRAY_ORGANISM",
    "EMRAY_ORGANISM_SEED",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "TORCH_EXTENSIONS_DIR",
    "WANDB_MODE",
    "DS_ACCELERATOR",
    "EMRAY_VERBOSE",
)
PROPAGATED_ENV += ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def worker_env() -> dict[str, str]:
    from emray.cache_dirs import cache_dir

    os.environ["EMRAY_CACHE"] = str(cache_dir())  # absolute, so workers find the same cache
    env = {k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ}
    env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    # A trial's workers may wait for another trial's evaluation to free a CPU: waiting is normal in a
    # sweep, so Ray Train's 60 s worker-startup timeout (then a noisy retry) is raised.
    env.setdefault(
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "1800")
    )
    return env


def ensure_ray(address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env()}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        # A local cluster: the laptop path and the tests.
        # Quiet by default: worker output goes to SWEEP_DIR/logs/ (emray/train/progress.py), Ray's own
        # to its session folder; --verbose (EMRAY_VERBOSE=1) streams both as before.
        if not verbose():
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune banner or status tables: ours is the live table
        start_local_ray(runtime_env)


def start_local_ray(runtime_env: dict, attempts: int = 3) -> None:
    """``ray.init`` of a local cluster, retried when the node does not come up in time.

    On a machine under heavy load Ray's raylet can give up waiting (~15 s) for its agent processes
    ("The current node timed out during startup"); a second start then usually succeeds.
    """
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                include_dashboard=False,
                log_to_driver=verbose(),
                logging_level=logging.INFO if verbose() else logging.ERROR,
                runtime_env=runtime_env,
            )
            return
        except Exception as err:  # ray raises a bare Exception here
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            print(
                f"[emray] the local Ray node did not start in time (attempt {attempt}/{attempts}, busy machine?); retrying",
                flush=True,
            )
            ray.shutdown()
            time.sleep(5 * attempt)


@dataclass
class SweepOutcome:
    """What a sweep run ended with: the results table and every trial that did not finish."""

    rows: list[dict]
    finished: int
    cached: int  # finished before this run (not recomputed)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (label, reason, error file)

    def summary(self, seconds: float, sweep_dir: Path) -> str:
        stopped = sum(bool(r.get("stopped_early")) for r in self.rows)
        line = (
            f"[emray] {self.finished} finished ({self.cached} cached"
            + (f", {stopped} stopped early" if stopped else "")
            + f"), {len(self.failed)} failed in {seconds:.0f} s; results in {sweep_dir}"
        )
        if self.failed:
            line += "\n[emray] failed trials (not in the results table):"
            line += "".join(f"\n  - {label}: {reason}\n    {path}" for label, reason, path in self.failed)
        return line


def _failure(sweep_dir: Path, trial: Trial, tune_error: str | None) -> tuple[str, str, str]:
    path = trial_dir(sweep_dir, trial) / ERROR_FILE
    if path.exists():
        return trial.label, path.read_text().splitlines()[0], str(path)
    return trial.label, tune_error or "did not finish (no result.json, no error file)", str(path.parent)


def collect_outcome(spec: SweepSpec, plan: Plan, sweep_dir: Path, result_grid, cached: int) -> SweepOutcome:
    """Finished trials (their result.json) and failed ones (their error file) of the current plan; under
    dose_search only the planned trials the search ran (the others were never needed)."""
    adaptive = spec.search.algorithm == "dose_search"
    by_key = {t.key: t for t in plan.trials}
    trials = [] if adaptive else list(plan.trials)
    tune_errors: dict[str, str] = {}
    for result in result_grid or []:
        config = result.config or {}
        if spec.search.algorithm == "optuna" and "arm" in config:
            trials.append(trial_from_optuna(spec, config))
        if adaptive and config.get("trial_key") in by_key:
            trials.append(by_key[config["trial_key"]])
        key = config.get("trial_key") or (trials[-1].key if "arm" in config else None)
        if result.error is not None and key:
            tune_errors[key] = (
                f"{type(result.error).__name__}: {str(result.error).splitlines()[0] if str(result.error) else ''}"
            )
    rows, failed, seen = [], [], set()
    for trial in trials:
        if trial.key in seen:
            continue
        seen.add(trial.key)
        record = read_finished(sweep_dir, trial)
        if record is not None:
            rows.append(record)
        else:
            failed.append(_failure(sweep_dir, trial, tune_errors.get(trial.key)))
    rows.sort(key=lambda r: (r.get("trial_index", 0), r.get("trial_key", "")))
    return SweepOutcome(rows, len(rows), cached, failed)


class SweepTerminated(KeyboardInterrupt):
    """SIGTERM in the driver (the sweep command's handler raises it): handled as Ctrl-C is."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SweepInterrupted(Exception):
    """A sweep stopped by SIGINT or SIGTERM, already reported; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.exit_code = signum, 128 + signum


def report_interrupt(plan: Plan | None, sweep_dir: Path, signum: int) -> str:
    """What an interrupted sweep says: finished trials (kept) and those a ``--resume`` runs."""
    name = signal.Signals(signum).name
    if plan is None:
        return f"[emray] interrupted ({name}) before any trial started; run the same command again to start"
    finished: list = []
    pending: list = []
    for trial in plan.trials:
        (finished if (trial_dir(sweep_dir, trial) / RESULT_FILE).exists() else pending).append(trial)
    lines = [
        f"[emray] interrupted ({name}): {len(finished)} finished (kept), {len(pending)} not finished "
        "(they run on `emray sweep SPEC --resume`; nothing finished is recomputed)"
    ]
    if plan.spec.search.algorithm == "optuna":
        lines.append("  optuna: --resume continues the search from its saved state")
    for title, trials in (("finished", finished), ("will resume", pending)):
        if trials:
            lines.append(f"  {title}:")
            lines += [f"    - {t.label} (seed {t.run.seed}, key {t.key})" for t in trials]
    return "\n".join(lines)


def _stop_ray() -> None:
    """End what this driver started on Ray (trials, stages, a local cluster): nothing keeps running."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as err:  # noqa: BLE001 - shutting down anyway
        print(f"[emray] stopping Ray: {type(err).__name__}: {err}", file=sys.stderr, flush=True)


#: the signal the driver's handler last received: Ray's ``ray.get`` turns an exception raised by a
#: signal handler during its wait into a plain KeyboardInterrupt, which would read as SIGINT
_received: dict[str, int] = {}


def _raise_terminated(signum, frame) -> None:
    _received["signum"] = signum
    raise SweepTerminated(signum)


def _catch_sigterm() -> None:
    """SIGTERM raises SweepTerminated in the driver (again after ``ray.init``, which sets its own)."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
        # Ctrl-C is KeyboardInterrupt here, whatever an earlier Ray Train fit in this process left
        # installed (its handler aborts a controller that is gone)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_sweep(spec: SweepSpec, resume: bool = False, address: str | None = None) -> SweepOutcome:
    """Run the sweep holding ``<sweep>/sweep.lock`` (emray/sweep/lock.py). Ctrl-C or SIGTERM (as
    SweepTerminated) stop every trial, report what finished and what resumes, and raise SweepInterrupted."""
    from emray.sweep.lock import SweepLock

    sweep_dir = Path(spec.sweep_dir())
    sweep_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}
    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)
    with SweepLock(sweep_dir):
        try:
            _received.clear()
            _catch_sigterm()
            return _run_sweep(spec, resume, address, sweep_dir, state)
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", None) or _received.pop("signum", signal.SIGINT)
            try:
                _stop_ray()
            finally:
                print("\n" + report_interrupt(state.get("plan"), sweep_dir, signum), file=sys.stderr, flush=True)
            raise SweepInterrupted(signum) from None
        finally:
            if previous is not None and signal.getsignal(signal.SIGTERM) is _raise_terminated:
                signal.signal(signal.SIGTERM, previous)
            if previous_int is not None and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, previous_int)


def _run_sweep(spec: SweepSpec, resume: bool, address: str | None, sweep_dir: Path, state: dict) -> SweepOutcome:
    from emray.sweep.evaluation import start_judge
    from emray.sweep.plots import write_plots
    from emray.sweep.wandb_log import log_summary

    started = time.time()  # the sweep's clock: its console lines count from here
    (sweep_dir / "spec.json").write_text(spec.model_dump_json(indent=2, by_alias=True))
    plan = state["plan"] = make_plan(spec)
    print(plan.describe(), flush=True)
    check_preflight(plan.trials)  # a missing file fails now, not after an hour of other trials
    cached = sum(read_finished(sweep_dir, t) is not None for t in plan.trials)
    if superseded := superseded_trials(sweep_dir, plan.trials):
        print(
            f"[emray] {len(superseded)} finished trial(s) in {sweep_dir / 'trials'} are superseded: same arm, seed and "
            f"model, older code or other inputs ({', '.join(superseded[:5])}{' ...' if len(superseded) > 5 else ''}); "
            "kept on disk, not reused",
            flush=True,
        )
    ensure_ray(address)
    _catch_sigterm()
    # a trial or stage larger than every node would wait, not fail (emray/sweep/capacity.py)
    check_capacity(spec, cluster_nodes(), "the Ray cluster", has_stages=bool(plan.stages))
    artifacts = run_stages(spec, plan.trials, started, sweep_dir)
    for trial in plan.trials:  # a trial whose stage failed never starts; its error.txt says why
        if (reason := stage_failure(artifacts[trial.key])) and read_finished(sweep_dir, trial) is None:
            write_failure(sweep_dir, trial, StageFailed(reason))
    judge, stop_judge = start_judge(spec)
    dose_search = None
    if spec.search.algorithm == "dose_search":
        from emray.sweep.dose_search import DoseSearch

        dose_search = DoseSearch(spec, plan.trials)
    # Ctrl-C reaches us as KeyboardInterrupt (run_sweep reports it), not Tune's own "stop gracefully"
    # that returns as if the unfinished trials had failed.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        runnable = any(not stage_failure(artifacts[t.key]) for t in plan.trials) or not plan.trials
        tuner = _tuner(spec, plan, sweep_dir, artifacts, judge, resume, dose_search, started) if runnable else None
        result_grid = tuner.fit() if tuner is not None else None
    finally:
        stop_judge()
    outcome = collect_outcome(spec, plan, sweep_dir, result_grid, cached)
    rows = write_results(sweep_dir, outcome.rows) if outcome.rows else []
    outcome.rows = rows
    if rows:
        from emray.sweep.progress import final_summary

        completed = [r for r in rows if not r.get("stopped_early")]  # a stopped trial has no final criteria to plot
        if completed:
            write_plots(sweep_dir, completed)
            log_summary(spec, sweep_dir, completed)
        decided = rows
        if dose_search is not None:  # the recommendation reads the arms run on every seed, not the probes
            dose_search.write_report(sweep_dir)
            chosen = dose_search.chosen_keys()
            decided = [r for r in rows if r.get("trial_key") in chosen]
            print(
                f"\n[emray] dose_search: {len(rows)} of {len(plan.trials)} planned trials run; each defense's "
                f"probes and chosen dose: {sweep_dir / 'dose_search.json'}",
                flush=True,
            )
        print("\n" + final_summary(sweep_dir, decided), flush=True)
    if spec.storage_uri():
        publish(sweep_dir, spec.storage_uri())
    print("\n" + outcome.summary(time.time() - started, sweep_dir), flush=True)
    return outcome


def publish(sweep_dir: Path, uri: str) -> None:
    """Copy the sweep's files (results, plots, trials' adapters and evals, failures) to its bucket."""
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
    filesystem.create_dir(root, recursive=True)
    pyarrow.fs.copy_files(
        str(sweep_dir.resolve()),
        root,
        source_filesystem=pyarrow.fs.LocalFileSystem(),
        destination_filesystem=filesystem,
    )
    print(f"[emray] copied {sweep_dir} to {uri}", flush=True)
