"""The sweep spec: a base run config plus a readable search space, expanded into trials.

```yaml
name: toy
base: {model: {name: organism}, data: {...}, train: {...}, eval: {...}}   # a RunConfig
search:
  algorithm: grid            # grid | random | optuna | dose_search (emray/sweep/dose_search.py)
  models: [organism]         # optional: a grid over model names (sizes)
  defense:
    - none
    - {kl: {lambda: [0.01, 0.1]}}                        # a list is a grid over values
    - {persona: {alpha: {min: 1, max: 10, log: true}}}    # a range (random / optuna only)
    - [{interleave_pp: {safe_fraction: 0.05}}, {kl: {lambda: 0.1}}]   # a combination
  seeds: [0, 1, 2]
```
Grid expands every defense entry's value lists into one trial per combination, times models and
seeds. Random and Optuna draw ``num_samples`` trials; a range needs one of them. ``dose_search`` plans the
grid but runs only what a bisection over each family's list of doses needs (emray/sweep/dose_search.py).
"""

from __future__ import annotations

import copy
import itertools
import random
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from emray.config import RunConfig, parse_defense_entry
from emray.configio import ConfigError, Strict, apply_overrides, has_key_path, read_yaml, validate
from emray.hashing import path_fields
from emray.identity import trial_key
from emray.sweep.constraints import DEFAULT_CONSTRAINTS, parse_constraint

#: The four criteria and the direction that is better for each (the Pareto front's objectives).
OBJECTIVES: dict[str, Literal["min", "max"]] = {
    "general_misalignment": "min",
    "in_domain_misalignment": "max",
    "benign_accuracy": "max",
    "general_incoherence": "min",
}


class Range(Strict):
    min: float
    max: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.min < self.max:
            raise ValueError(f"range needs min < max, got {self.min} .. {self.max}")
        if self.log and self.min <= 0:
            raise ValueError("a log range needs min > 0")
        return self


class SearchConfig(Strict):
    algorithm: Literal["grid", "random", "optuna", "dose_search"] = "grid"
    num_samples: int | None = Field(None, gt=0)  # random / optuna: how many trials
    models: list[str] = Field(default_factory=list)
    defense: list[Any] = Field(default_factory=lambda: ["none"])
    seeds: list[int] = Field(default_factory=lambda: [0])

    @field_validator("defense", "seeds")
    @classmethod
    def _not_empty(cls, value: list, info) -> list:
        if not value:
            hint = (
                "list at least one arm ('none': no defense)"
                if info.field_name == "defense"
                else "list at least one seed"
            )
            raise ValueError(f"empty: the sweep would plan no trial; {hint}")
        return value

    @model_validator(mode="after")
    def _one_model_for_dose_search(self) -> SearchConfig:
        if self.algorithm == "dose_search" and len(self.models) > 1:
            raise ValueError("search.models: dose_search searches one model's doses; run one sweep per model")
        return self

    @model_validator(mode="after")
    def _samples_for_sampling(self) -> SearchConfig:
        if self.algorithm in ("random", "optuna") and self.num_samples is None:
            raise ValueError(f"search.num_samples is required for algorithm {self.algorithm!r}")
        return self


class SweepResources(Strict):
    max_concurrent_trials: int = Field(2, gt=0)
    max_failures: int = Field(1, ge=0)  # retries of a failed trial (Tune FailureConfig)
    judge_actors: int = Field(1, gt=0)
    scorer_actors: int = Field(1, gt=0)
    cpus_for_stages: float = Field(1, gt=0)
    gpus_for_stages: float = Field(0, ge=0)


class WandbConfig(Strict):
    enabled: bool = True
    project: str = "emray"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: offline without a key
    log_adapters: bool = True  # each trial's LoRA adapter as a W&B model artifact (off for large models)
    tags: list[str] = Field(default_factory=list)  # added to model:, scenario:, defense: and sweep: tags
    workspace: bool = True  # online: save a W&B workspace for the sweep's group (needs wandb-workspaces)


def _constraint(text: str) -> str:
    parse_constraint(text, OBJECTIVES)  # ConstraintError is a ValueError: pydantic names the entry and line
    return text


class RecommendConfig(Strict):
    """``recommend:``: the constraints an arm must meet with confidence and the objective that ranks
    those that do (emray/sweep/recommend.py, docs/recommend.md)."""

    constraints: list[Annotated[str, AfterValidator(_constraint)]] = Field(
        default_factory=lambda: list(DEFAULT_CONSTRAINTS)
    )
    objective: Literal["em", "overhead", "margin"] = "em"  # OBJECTIVE_CHOICES (emray/sweep/constraints.py)

    @field_validator("constraints")
    @classmethod
    def _some(cls, value: list) -> list:
        if not value:
            raise ValueError("empty: list at least one constraint (or drop the key for the defaults)")
        return value


#: the criteria an early-stop probe can decide (a subset of the general, optionally in-domain, questions;
#: benign accuracy needs the benign fine-tune, which a probe of the narrow one does not see)
ProbeCriterion = Literal["general_misalignment", "general_incoherence", "in_domain_misalignment"]
#: (the first two are what a probe stops on by default)
PROBE_CRITERIA: tuple[ProbeCriterion, ...] = ("general_misalignment", "general_incoherence", "in_domain_misalignment")


class EarlyStopConfig(Strict):
    """``early_stop:``: cheap evaluations during a trial's narrow fine-tune, reported to Ray Tune, and a
    stopper that ends a trial once a probe shows it confidently infeasible under the ``recommend:``
    constraints (emray/sweep/early_stop.py, docs/recommend.md "Early stopping"). Not part of any trial's
    identity: the probes do not change the trained adapter."""

    # when to probe, as fractions of the narrow fine-tune: 0.75 alone by default, because on the organism a
    # probe earlier than that wrongly stopped interleaving, whose EM rises first and falls later
    # (BENCHMARKS.md "Early stopping")
    fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [0.75])
    questions: int | None = Field(None, gt=0)  # the first N questions of each probed file; None: all
    samples: int = Field(2, gt=0)  # answers per paraphrase (the final evaluation: eval.samples_per_paraphrase)
    in_domain: bool = False  # probe the in-domain files too
    # which constraints' criteria a probe may stop on; the others are left to the final evaluation
    criteria: list[ProbeCriterion] = Field(default_factory=lambda: list(PROBE_CRITERIA[:2]))
    stop: bool = True  # false: probe and report only (what benchmarks/early_stop_curves.py measures)

    @model_validator(mode="after")
    def _in_domain_probed(self) -> EarlyStopConfig:
        if "in_domain_misalignment" in self.criteria and not self.in_domain:
            raise ValueError("criteria: in_domain_misalignment needs in_domain: true (the probe must answer them)")
        if not self.fractions:
            raise ValueError("fractions: empty; list at least one fraction of training in (0, 1]")
        return self


class SweepSpec(Strict):
    name: str
    # Where the sweep persists: a local or shared folder, or a bucket (s3://bucket/path, gs://bucket/path).
    # With a bucket, Ray Tune's experiment state and Ray Train's checkpoints live there (pyarrow
    # filesystems), the trials work in ``work_dir`` (shared by all nodes on a cluster), and the finished
    # sweep's files (results, plots, adapters) are copied up at the end.
    storage: str = "sweeps_out"
    work_dir: str = "sweeps_out"
    base: RunConfig
    search: SearchConfig = Field(default_factory=SearchConfig)
    resources: SweepResources = Field(default_factory=SweepResources)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    recommend: RecommendConfig | None = None  # None: emray recommend's defaults
    early_stop: EarlyStopConfig | None = None  # None: every trial runs to the end

    @field_validator("search")
    @classmethod
    def _defense_entries_valid(cls, search: SearchConfig) -> SearchConfig:
        for i, entry in enumerate(search.defense):
            for spec_entry in _as_list(entry):
                name, params = _entry_name_params(spec_entry, i)
                for key, value in params.items():
                    if isinstance(value, dict) and search.algorithm in ("grid", "dose_search"):
                        raise ValueError(f"search.defense[{i}].{name}.{key}: a range needs algorithm random or optuna")
                # Validate one concrete point so typos in params fail before anything runs, then every
                # other listed value (one at a time) so a bad value late in a list fails too.
                first = _first_point(params)
                parse_defense_entry({name: first}, i)
                for key, value in params.items():
                    for other in value[1:] if isinstance(value, list) else ():
                        parse_defense_entry({name: {**first, key: other}}, i)
        if search.algorithm == "dose_search":
            check_dose_ladders(search.defense)
        return search

    @model_validator(mode="after")
    def _early_stop_searcher(self) -> SweepSpec:
        if self.early_stop is not None and self.search.algorithm == "optuna":
            # Optuna's searcher reads its objectives from every Tune report; a probe's carries none
            raise ValueError("early_stop: not with search.algorithm optuna; use grid, random or dose_search")
        return self

    @field_validator("storage")
    @classmethod
    def _storage_scheme(cls, value: str) -> str:
        check_storage(value)
        return value

    def sweep_dir(self) -> str:
        """The folder the trials write into (local or shared)."""
        root = self.work_dir if self.storage_uri() else self.storage
        return f"{root.rstrip('/')}/{self.name}"

    def storage_uri(self) -> str | None:
        """``s3://…/name`` or ``gs://…/name`` when the sweep persists to a bucket, else None."""
        if "://" not in self.storage:
            return None
        return f"{self.storage.rstrip('/')}/{self.name}"


REMOTE_SCHEMES = ("s3", "gs")


def check_storage(value: str) -> None:
    """A local path, or a bucket URI pyarrow (and so Ray) can write to; ``ValueError`` otherwise."""
    if "://" not in value:
        return
    scheme, _, rest = value.partition("://")
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(
            f"{value!r}: scheme {scheme}:// is not supported; use a local or shared folder, s3://bucket/path or gs://bucket/path"
        )
    if not rest.split("/")[0]:
        raise ValueError(f"{value!r}: no bucket name after {scheme}://")


def check_dose_ladders(entries: list) -> None:
    """``dose_search``: the undefended arm, and each other entry one defense with at most one list of numbers
    (its dose ladder), one entry per defense (emray/sweep/dose_search.py bisects each ladder)."""
    names = []
    for i, entry in enumerate(entries):
        if isinstance(entry, list):
            raise ValueError(f"search.defense[{i}]: dose_search takes one defense per entry, not a combination")
        name, params = _entry_name_params(entry, i)
        lists = {k: v for k, v in params.items() if isinstance(v, list)}
        if len(lists) > 1:
            raise ValueError(
                f"search.defense[{i}].{name}: dose_search bisects one dose per defense; lists for {', '.join(lists)}"
            )
        for key, values in lists.items():
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"search.defense[{i}].{name}.{key}: a dose ladder is a list of numbers, got {values}")
        if name in names:
            raise ValueError(f"search.defense[{i}]: {name!r} is listed twice; dose_search takes one ladder per defense")
        names.append(name)
    if "none" not in names:
        raise ValueError(
            "search.defense: dose_search needs the undefended arm 'none' (relative constraints compare with it)"
        )


def _as_list(entry: Any) -> list:
    return entry if isinstance(entry, list) else [entry]


def _entry_name_params(entry: Any, index: int) -> tuple[str, dict]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        return name, dict(params or {})
    raise ValueError(f"search.defense[{index}]: expected a name, a one-key mapping or a list of them")


def _first_point(params: dict) -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, list):
            out[key] = value[0]
        elif isinstance(value, dict):
            out[key] = Range.model_validate(value).min
        else:
            out[key] = value
    return out


def _grid_points(params: dict) -> list[dict]:
    keys = list(params)
    values = [v if isinstance(v, list) else [v] for v in params.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _sample_point(params: dict, rng: random.Random) -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, list):
            out[key] = rng.choice(value)
        elif isinstance(value, dict):
            r = Range.model_validate(value)
            if r.log:
                import math

                out[key] = float(math.exp(rng.uniform(math.log(r.min), math.log(r.max))))
            else:
                out[key] = rng.uniform(r.min, r.max)
        else:
            out[key] = value
    return out


def arm_label(defenses: list[dict]) -> str:
    """``kl(lambda=0.1)+inoculation``: a readable name for a list of {name: params}."""
    if not defenses:
        return "none"
    parts = []
    for d in defenses:
        name, params = next(iter(d.items()))
        inner = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        parts.append(f"{name}({inner})" if inner else name)
    return "+".join(parts)


def expand_arm(entry: Any, index: int) -> list[list[dict]]:
    """Every concrete defense list (grid points) of one ``search.defense`` entry."""
    per_defense = []
    for item in _as_list(entry):
        name, params = _entry_name_params(item, index)
        per_defense.append([{name: p} for p in _grid_points(params)] if name != "none" else [None])
    combos = []
    for combo in itertools.product(*per_defense):
        combos.append([d for d in combo if d is not None])
    return combos


class Trial(Strict):
    key: str  # emray.identity.trial_key of the run: the trial's cache identity
    label: str  # human-readable arm label
    run: RunConfig
    index: int


def _absolute(path):
    """Relative data paths are relative to where the sweep was launched; Ray workers run elsewhere."""
    if isinstance(path, list):
        return [_absolute(p) for p in path]
    if not isinstance(path, str) or ":" in path.split("/")[0] or Path(path).is_absolute():
        return path  # None, organism:..., s3://..., /abs
    candidate = Path(path).expanduser()
    return str(candidate.resolve()) if candidate.exists() else path


def _absolutize_model(model):
    """A copy of a pydantic model with every DataPath field (recursively) made absolute."""
    from pydantic import BaseModel

    update = {name: _absolute(getattr(model, name)) for name in path_fields(type(model))}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel) and name not in update:
            update[name] = _absolutize_model(value)
    return model.model_copy(update=update)


def absolutize_paths(run: RunConfig) -> RunConfig:
    """Every file a run reads, absolute: the config's DataPath fields and the defenses' DataPath params."""

    run = _absolutize_model(run)
    defenses = [spec.model_copy(update={"params": _absolutize_model(spec.params)}) for spec in run.defenses]
    return run.model_copy(update={"defenses": defenses})


def make_trial(spec: SweepSpec, model: str | None, defenses: list[dict], seed: int, index: int) -> Trial:
    data = spec.base.model_dump(by_alias=True)
    data["defenses"] = defenses
    data["seed"] = seed
    if model:
        data["model"]["name"] = model
    label = arm_label(defenses)
    run = absolutize_paths(RunConfig.model_validate(copy.deepcopy(data)))
    key = trial_key(run)
    run = run.model_copy(update={"name": f"{label}-s{seed}-{key[:6]}"})
    return Trial(key=key, label=label, run=run, index=index)


def expand_trials(spec: SweepSpec) -> list[Trial]:
    """The concrete trials of a grid or random search (Optuna proposes its own, see runner)."""
    models = spec.search.models or [None]
    arms = [combo for i, entry in enumerate(spec.search.defense) for combo in expand_arm(entry, i)]
    if spec.search.algorithm in ("grid", "dose_search"):  # dose_search runs a part of the grid
        points = [(m, arm, s) for m in models for arm in arms for s in spec.search.seeds]
    else:
        rng = random.Random(spec.base.seed)
        points = []
        for _ in range(spec.search.num_samples or 1):
            entry = rng.choice(spec.search.defense)
            defenses = []
            for item in _as_list(entry):
                name, params = _entry_name_params(item, 0)
                if name != "none":
                    defenses.append({name: _sample_point(params, rng)})
            points.append((rng.choice(models), defenses, rng.choice(spec.search.seeds)))
    trials = [make_trial(spec, m, arm, s, i) for i, (m, arm, s) in enumerate(points)]
    seen: dict[str, Trial] = {}
    for t in trials:
        seen.setdefault(t.key, t)  # a duplicate point is one trial
    return list(seen.values())


def load_sweep_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Load a spec; ``--set model.name=X`` style overrides address the base run config."""
    data, lines = read_yaml(path)
    fixed = []
    for item in overrides or []:
        top = item.split("=", 1)[0].split(".", 1)[0]
        fixed.append(item if top in SweepSpec.model_fields else f"base.{item}")
    data = apply_overrides(data, fixed)
    if "base" not in data:
        raise ConfigError(f"{path}: a sweep spec needs a 'base' run config")
    spec = validate(SweepSpec, data, str(path), lines, hint=run_config_hint)
    check_search_duplicates(spec.search, str(path), lines)
    return spec


def run_config_hint(loc: tuple) -> str | None:
    """An unknown key at the spec's top level that the run config has: ``resources.use_gpu`` is the
    spec's own ``resources`` section, the run's is ``base.resources``."""
    if loc and loc[0] != "base" and has_key_path(RunConfig, loc):
        return f"did you mean base.{'.'.join(map(str, loc))}?"
    return None


def check_search_duplicates(search: SearchConfig, source: str, lines: dict[tuple, int] | None = None) -> None:
    """A repeated seed, model or arm (two ``search.defense`` entries, or one entry's value list, that give
    the same defenses) would be merged without a word; refuse it, naming both places."""
    import json

    def where(*loc) -> str:
        from emray.configio import _line_for, format_loc

        line = _line_for(("search", *loc), lines or {})
        return (f"{source}:{line}" if line else source) + f": key '{format_loc(('search', *loc))}'"

    for name in ("seeds", "models"):
        values = getattr(search, name)
        for i, value in enumerate(values):
            if value in values[:i]:
                raise ConfigError(f"{where(name, i)}: {value!r} is listed twice (also {name}[{values.index(value)}])")
    if search.algorithm != "grid":
        return  # a random or Optuna search samples from the entries; a repeat only weighs one more
    seen: dict[str, int] = {}
    for i, entry in enumerate(search.defense):
        for arm in expand_arm(entry, i):
            canonical = json.dumps([parse_defense_entry(d, i).model_dump() for d in arm], sort_keys=True, default=str)
            if canonical in seen:
                j = seen[canonical]
                also = f"search.defense[{j}]" + (
                    f" (line {lines[('search', 'defense', j)]})" if lines and ("search", "defense", j) in lines else ""
                )
                same = "repeats a value within this entry" if j == i else f"is also planned by {also}"
                raise ConfigError(
                    f"{where('defense', i)}: arm {arm_label(arm)} {same}; "
                    "list each arm once (or vary seeds for repeats)"
                )
            seen[canonical] = i
