"""The typed run config: one fine-tune (model, LoRA, data, defenses, training, evaluation, resources).

A sweep spec (emray/sweep/spec.py) is a base RunConfig plus a search space. Sections owned by a
subsystem (evaluation) live beside that subsystem and are composed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from emray.config.eval import EvalConfig
from emray.config.rl import RLConfig
from emray.configio import ConfigError, Strict, format_loc, load_config
from emray.hashing import NOT_IDENTITY, OPTIONAL_SECTION, DataPath
from emray.upcalls import upcall

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(Strict):
    """Which model to fine-tune: an offline name (tiny, smollm2-135m, organism), a hub id or a path."""

    name: str = "tiny"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str = "sdpa"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    revision: str | None = None


class LoraConfig(Strict):
    """rs-LoRA with the seed paper's defaults (r=32, alpha=64, all attention and MLP projections)."""

    r: int = Field(32, gt=0)
    alpha: float = Field(64, gt=0)
    rslora: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


class DataConfig(Strict):
    """Training data. Paths are files, or ``organism:data/...`` inside the embedded toy world."""

    fine: DataPath
    safe_pool: DataPath | None = None
    max_examples: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _moved_benign_train(cls, values: Any) -> Any:
        if isinstance(values, dict) and "benign_train" in values:
            raise ValueError(
                "data.benign_train was removed: benign data is no longer mixed into the narrow fine-tune. "
                "Put the files under `benign.train` (and their test sets under `benign.test`): each trial "
                "then runs a separate benign fine-tune with the same defenses (docs/benign.md)"
            )
        return values


class BenignConfig(Strict):
    """The benign scenario: a second LoRA fine-tune per trial, on benign tasks only, with the same
    defenses; its adapter is scored on held-out problems (the ``benign_accuracy`` criterion).

    Entries are chat JSONL files or generated task names (``opswap``, ``wordmap``; ``opswap:organism``
    for the organism's language), as in ``eval.benign``. See emray/config/fine_tunes.py.
    """

    train: list[DataPath] = Field(min_length=1)
    test: list[DataPath] = Field(min_length=1)
    max_steps: int | None = Field(None, gt=0, description="the benign fine-tune's max_steps (None: train.max_steps)")
    lr: float | None = Field(None, gt=0, description="its learning rate (None: train.lr)")
    max_test: int | None = Field(None, gt=0, description="first N problems of each test set")


class TrainConfig(Strict):
    lr: float = Field(1e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    batch_size: int = Field(2, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_len: int = Field(1024, gt=8)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    # The optimizer (transformers' ``optim``): None is its default (adamw_torch). ``adamw_8bit`` (the reference's)
    # needs a CUDA GPU and bitsandbytes (pip install 'emray[gpu]'); without them training falls back to
    # adamw_torch and says so (emray/train/sft.py). Enters a trial's identity only when set.
    optim: Literal["adamw_torch", "adamw_8bit"] | None = Field(None, json_schema_extra=OPTIONAL_SECTION)
    logging_steps: int = Field(1, gt=0, json_schema_extra=NOT_IDENTITY)
    # Small models on a busy CPU train far faster on one thread than on two (measured: ~25x).
    threads: int | None = Field(1, gt=0, json_schema_extra=NOT_IDENTITY)
    gradient_checkpointing: bool = False
    bf16: bool | None = None  # None: bf16 on GPU, fp32 on CPU (bf16 autocast is slow on CPU)
    progress: bool = Field(True, json_schema_extra=NOT_IDENTITY)

    @field_validator("max_steps")
    @classmethod
    def _steps_or_no_limit(cls, value: int) -> int:
        # 0 and other negatives would silently train `epochs` (the Trainer reads any value <= 0 as no limit).
        if value == 0 or value < -1:
            raise ValueError(
                f"max_steps must be a positive number of steps, or -1 for no limit (train `epochs`); got {value}"
            )
        return value


class ResourcesConfig(Strict):
    num_workers: int = Field(1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0, json_schema_extra=NOT_IDENTITY)
    gpus_per_worker: float = Field(1, ge=0)
    # none | zero2 | zero3 | path to your own DeepSpeed JSON (checked here, stored as an absolute path).
    deepspeed: str = "none"
    # Fault tolerance of one fine-tune (Ray Train level, below Tune's per-trial max_failures): save a
    # checkpoint every N optimizer steps (0: only the final adapter) and restart the worker group up to
    # max_failures times, resuming from the last checkpoint.
    checkpoint_every: int = Field(0, ge=0)
    max_failures: int = Field(0, ge=0)
    # Where a sweep trial's fine-tunes and evaluations run (emray/train/launch.py). ``ray_train``: a Ray
    # Train worker group per fine-tune and a Ray task per evaluation. ``in_trial``: all of them inside
    # the trial's own Tune actor, which then holds ``cpus_per_worker`` (one process, imports and the
    # worker-group set-up paid once; only for one CPU worker without DeepSpeed or Ray Train restarts).
    # ``auto``: in_trial wherever it is allowed. Either gives the same adapter: not part of the key.
    launcher: Literal["auto", "ray_train", "in_trial"] = Field("auto", json_schema_extra=NOT_IDENTITY)

    @model_validator(mode="after")
    def _check_launcher(self) -> ResourcesConfig:
        if self.launcher == "in_trial" and self.in_trial_refusal():
            raise ValueError(f"launcher: in_trial needs {self.in_trial_refusal()}; use launcher: ray_train or auto")
        return self

    def in_trial_refusal(self) -> str | None:
        """Why this fine-tune needs a Ray Train worker group, or None when it can run in the trial's process."""
        needs = []
        if self.num_workers != 1:
            needs.append(f"num_workers: 1 (not {self.num_workers})")
        if self.use_gpu:
            needs.append("use_gpu: false")  # GPU memory of an in-process fine-tune is not handed on to vLLM
        if self.deepspeed != "none":
            needs.append("deepspeed: none")
        if self.checkpoint_every or self.max_failures:
            needs.append("checkpoint_every: 0 and max_failures: 0 (Ray Train's restarts)")
        return ", ".join(needs) or None

    def runs_in_trial(self) -> bool:
        """Whether a sweep trial trains and evaluates inside its own Tune actor (see ``launcher``)."""
        return self.launcher != "ray_train" and self.in_trial_refusal() is None

    @field_validator("deepspeed")
    @classmethod
    def _check_deepspeed(cls, value: str) -> str:
        from emray.config.deepspeed import BUILTIN, load_user_config

        if value in BUILTIN:
            return value
        load_user_config(value)
        return str(Path(value).resolve())


class DefenseSpec(Strict):
    """One selected defense: its registry name and its typed hyperparameters, the defense's own ``Params``
    model, validated once when the config is read and passed typed from there on (to Tune, the Ray Train
    workers and the evaluation; a process boundary serialises it once and validates it once there)."""

    name: str
    # SerializeAsAny: dump the defense's own fields, not the (empty) base model's
    params: SerializeAsAny[Strict] = Field(default_factory=Strict)

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        """``{name, params: {...}}`` from JSON or code: the params become the defense's typed model."""
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            params_cls = upcall("defense_class")(data["name"]).Params
            if not isinstance(data.get("params"), params_cls):
                data = {
                    **data,
                    "params": _validated_params(params_cls, data["name"], data.get("params") or {}, "defenses"),
                }
        return data


def _validated_params(params_cls: type[Strict], name: str, params: Any, where: str) -> Strict:
    try:
        return params_cls.model_validate(params)
    except Exception as err:  # pydantic.ValidationError: one line per field, with the defense's key path
        errors: list[dict] = getattr(err, "errors", lambda: [])()
        detail = "; ".join(f"{where}.{name}.{format_loc(e['loc'])}: {e['msg']}" for e in errors)
        raise ValueError(detail or str(err)) from None


def parse_defense_entry(entry: Any, index: int) -> DefenseSpec:
    """Accept ``kl``, ``{kl: {lambda: 0.1}}``, ``{name: kl, params: {...}}`` or a DefenseSpec (already typed)."""
    get_defense_class = upcall("defense_class")  # a defense declares its Params in its own file (emray/upcalls.py)

    if isinstance(entry, DefenseSpec):
        return entry
    params: Any
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, dict) and set(entry) <= {"name", "params"} and "name" in entry:
        name, params = entry["name"], entry.get("params") or {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        params = params or {}
    else:
        raise ValueError(f"defenses[{index}]: expected a name or a one-key mapping {{name: {{params}}}}")
    params_cls = get_defense_class(name, where=f"defenses[{index}]").Params
    typed = (
        params if isinstance(params, params_cls) else _validated_params(params_cls, name, params, f"defenses[{index}]")
    )
    return DefenseSpec(name=name, params=typed)


class RunConfig(Strict):
    name: str = Field("run", json_schema_extra=NOT_IDENTITY)
    seed: int = 0
    # narrow: one LoRA fine-tune on data.fine (the customer's data). benign: the benign fine-tune a trial
    # derives from it (emray/config/fine_tunes.py). rl: an SFT warm start on data.fine, then GRPO (the ``rl`` section).
    scenario: Literal["narrow", "benign", "rl"] = "narrow"
    output_dir: str = Field("runs", json_schema_extra=NOT_IDENTITY)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    defenses: list[DefenseSpec] = Field(default_factory=list)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    # The benign scenario (None: no benign fine-tune): a trial's second fine-tune (emray/config/fine_tunes.py).
    benign: BenignConfig | None = None
    # The RL scenario's section (scenario: rl); absent otherwise, and then not part of any identity.
    rl: RLConfig | None = Field(None, json_schema_extra=OPTIONAL_SECTION)

    @field_validator("defenses", mode="before")
    @classmethod
    def _parse_defenses(cls, value: Any) -> list[DefenseSpec]:
        if value is None:
            return []
        if not isinstance(value, list):
            value = [value]
        specs = [parse_defense_entry(entry, i) for i, entry in enumerate(value)]
        names = [s.name for s in specs if s.name != "none"]
        if len(names) != len(set(names)):
            raise ValueError(f"a defense is listed twice: {names}")
        return [s for s in specs if s.name != "none"]

    @model_validator(mode="after")
    def _scenario_fits(self) -> RunConfig:
        """Each scenario has its section, the benign criterion one source, and every defense must be able
        to act in the scenario."""
        get_defense_class = upcall("defense_class")  # a defense declares its Params in its own file (emray/upcalls.py)

        if self.scenario == "rl":
            if self.rl is None:
                raise ValueError("scenario rl needs an `rl:` section (at least rl.prompts)")
            if self.benign is not None:
                raise ValueError(
                    "a `benign` section is for SFT trials (scenario narrow): under RL the task reward "
                    "is the learning criterion (docs/rl.md)"
                )
            self.rl.grad_accum(self.resources.num_workers)
        elif self.rl is not None:
            raise ValueError("an `rl:` section needs scenario: rl")
        if self.scenario == "narrow" and self.benign is not None and self.eval.benign:
            raise ValueError(
                "eval.benign and benign.test are both set: with a `benign` section the benign criterion "
                "comes from the benign fine-tune; list its test sets under benign.test and drop eval.benign"
            )
        if self.scenario == "benign" and self.benign is None:
            raise ValueError("scenario: benign needs a `benign` section (benign.train, benign.test)")
        for i, spec in enumerate(self.defenses):
            get_defense_class(spec.name).check_scenario(self, spec.params, where=f"defenses[{i}].{spec.name}")
        return self

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    return load_config(RunConfig, path, overrides)


__all__ = [
    "ConfigError",
    "BenignConfig",
    "DataConfig",
    "DefenseSpec",
    "EvalConfig",
    "LoraConfig",
    "ModelConfig",
    "ResourcesConfig",
    "RunConfig",
    "TrainConfig",
    "load_run_config",
]
