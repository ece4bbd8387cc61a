"""One identity (emray/identity.py): trial and stage keys follow results, not settings or file names."""

import shutil

import pytest
from conftest import SHARED_DATA

from emray.config import RunConfig
from emray.defenses import get_defense_class
from emray.hashing import NOT_IDENTITY, identity_dict, sha256
from emray.identity import stage_key, trial_key
from emray.sweep.runner import make_plan
from emray.sweep.spec import SweepSpec


def run(tmp_path, **changes):
    data = {
        "model": {"name": "tiny"},
        "data": {"fine": str(tmp_path / "fine.jsonl")},
        "eval": {"general": str(SHARED_DATA / "questions" / "general.yaml")},
        "defenses": [{"kl": {"lambda": 0.1}}],
    }
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return RunConfig.model_validate(data)


@pytest.fixture
def files(tmp_path):
    shutil.copy(SHARED_DATA / "train" / "medical.jsonl", tmp_path / "fine.jsonl")
    return tmp_path


@pytest.mark.parametrize(
    "field,value",
    [
        ("train__progress", False),
        ("train__threads", 2),
        ("train__logging_steps", 5),
        ("eval__judge__concurrency", 2),
        ("eval__judge__requests_per_minute", 60.0),
        ("eval__judge__max_failure_rate", 0.2),
        ("resources__cpus_per_worker", 4),
        ("name", "other"),
    ],
)
def test_settings_that_do_not_change_results_leave_the_key(files, field, value):
    assert trial_key(run(files, **{field: value})) == trial_key(run(files))


def test_kl_chunk_tokens_is_not_identity(files):
    assert trial_key(run(files, defenses=[{"kl": {"lambda": 0.1, "chunk_tokens": 64}}])) == trial_key(run(files))
    assert trial_key(run(files, defenses=[{"kl": {"lambda": 0.2}}])) != trial_key(run(files))


@pytest.mark.parametrize("field,value", [("train__lr", 1e-3), ("seed", 1), ("eval__temperature", 0.5), ("lora__r", 8)])
def test_settings_that_change_results_change_the_key(files, field, value):
    assert trial_key(run(files, **{field: value})) != trial_key(run(files))


def test_data_file_enters_by_content(files):
    before = trial_key(run(files))
    fine = files / "fine.jsonl"
    fine.write_text(fine.read_text() + fine.read_text().splitlines()[0] + "\n")
    assert trial_key(run(files)) != before
    # The same content under another name is the same data (the path itself is still named).
    assert trial_key(run(files)) == trial_key(run(files))


@pytest.mark.parametrize(
    "defense,param",
    [
        ("persona", "prompts"),
        ("interleave_plus", "pool"),
        ("interleave_plus", "ensemble"),
        ("interleave", "pool"),
        ("persona", "trait_prompt"),
    ],
)
def test_defense_path_params_enter_by_content(files, defense, param):
    target = files / "param_file.jsonl"
    target.write_text("one\n")
    value = [str(target)] if param == "ensemble" else str(target)
    before = trial_key(run(files, defenses=[{defense: {param: value}}]))
    target.write_text("two\n")
    assert trial_key(run(files, defenses=[{defense: {param: value}}])) != before


def test_local_model_folder_enters_by_content(files):
    model = files / "model"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    before = trial_key(run(files, model={"name": str(model)}))
    (model / "config.json").write_text('{"a": 2}')
    assert trial_key(run(files, model={"name": str(model)})) != before


def test_identity_markers_come_from_the_schema():
    from emray.config import TrainConfig

    cfg = TrainConfig()
    dumped = identity_dict(cfg)
    assert "progress" not in dumped and "threads" not in dumped and "lr" in dumped
    assert RunConfig.model_fields["name"].json_schema_extra == NOT_IDENTITY


def test_one_sha256():
    assert sha256({"b": 1, "a": 2}) == sha256({"a": 2, "b": 1}) and len(sha256(b"x")) == 64


def test_stage_keys(files):
    persona = get_defense_class("persona")
    prompts = files / "prompts.json"
    prompts.write_text("[1]")
    a = stage_key(persona, run(files), persona.Params.model_validate({"prompts": str(prompts)}))
    # the trial's own settings (lr) do not change the persona vector's stage
    assert stage_key(persona, run(files, train__lr=1e-3), persona.Params.model_validate({"prompts": str(prompts)})) == a
    prompts.write_text("[2]")
    assert stage_key(persona, run(files), persona.Params.model_validate({"prompts": str(prompts)})) != a


def test_stages_are_deduplicated_by_identity(files):
    spec = SweepSpec.model_validate(
        {
            "name": "s",
            "storage": str(files / "out"),
            "base": {"model": {"name": "tiny"}, "data": {"fine": str(files / "fine.jsonl")}},
            "search": {
                "defense": [{"persona": {"alpha": [1.0, 2.0]}}, {"persona": {"alpha": 3.0, "max_new_tokens": 8}}]
            },
        }
    )
    plan = make_plan(spec)
    # alpha does not change the vector: 2 stages (32 and 8 tokens) for 3 trials
    assert len(plan.trials) == 3 and len(plan.stages) == 2


def test_an_absent_optional_section_is_not_part_of_the_key():
    """``rl`` (OPTIONAL_SECTION) enters an identity only when set: adding the RL scenario to emray left every
    SFT trial key as it was; setting it is a different trial."""
    run = RunConfig.model_validate({"data": {"fine": "x.jsonl"}})
    assert "rl" not in identity_dict(run) and "benign" in identity_dict(run)
    rl = RunConfig.model_validate({"scenario": "rl", "data": {"fine": "x.jsonl"}, "rl": {"prompts": "p.jsonl"}})
    assert identity_dict(rl)["rl"]["prompts"] == "p.jsonl" and trial_key(rl) != trial_key(run)


#: words that make a string field name a file or folder (a config or defense field whose name is one of
#: these, or ends in one after "_", must be typed DataPath, or say why not below)
FILE_WORDS = {
    "pool",
    "prompts",
    "prompt",
    "file",
    "path",
    "dir",
    "fine",
    "general",
    "in_domain",
    "benign",
    "train",
    "test",
    "ensemble",
    "data",
    "questions",
    "adapter",
    "pool_path",
}
#: string fields with a file-like name that are not files, and why
NOT_FILES = {
    ("InoculationParams", "prompt"): "the system prompt text itself",
    ("RLConfig", "system_prompt"): "the system prompt text itself",
    ("EvalConfig", "system_prompt"): "the system prompt text itself",
    ("SFTMixParams", "data"): "a selection method name (random | interleave_plus | interleave_pp | onpolicy)",
    ("InterleavedRLParams", "data"): "a selection method name",
    ("JudgeConfig", "cache_path"): "a cache location (NOT_IDENTITY): it never changes results",
    ("RunConfig", "output_dir"): "where the run is written (NOT_IDENTITY), not read",
}


def _schema_models():
    """Every pydantic model a run config or a defense is made of (the run config's tree, every defense's
    Params, every reward's Params)."""
    from pydantic import BaseModel

    from emray.defenses import available_defenses, get_defense_class
    from emray.rl.rewards import get_reward_class, reward_names

    roots = (
        [RunConfig]
        + [get_defense_class(n).Params for n in available_defenses()]
        + [get_reward_class(n).Params for n in reward_names()]
    )
    seen, todo = {}, list(roots)
    while todo:
        cls = todo.pop()
        if cls.__name__ in seen:
            continue
        seen[cls.__name__] = cls
        for field in cls.model_fields.values():
            for arg in _flat_args(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    todo.append(arg)
    return seen


def _flat_args(annotation):
    from typing import get_args

    yield annotation
    for arg in get_args(annotation):
        yield from _flat_args(arg)


def _is_str_field(annotation) -> bool:
    return any(arg is str for arg in _flat_args(annotation))


def test_every_field_that_names_a_file_is_typed_as_one():
    """A string field with a file-like name is DataPath (its content enters the key, --dry-run checks it):
    a field left as a plain str would make an edited file a stale cache hit (the old interleave.pool)."""
    from emray.hashing import is_path_type

    models = _schema_models()
    assert {"RunConfig", "DataConfig", "EvalConfig", "KLParams", "InterleaveParams", "RLConfig"} <= set(models)
    untyped = []
    for cls_name, cls in models.items():
        for name, field in cls.model_fields.items():
            words = {name, name.rpartition("_")[2]}
            if (
                _is_str_field(field.annotation)
                and words & FILE_WORDS
                and not is_path_type(field.annotation)
                and not any(getattr(m, "__class__", None).__name__ == "_PathMark" for m in field.metadata)
                and (cls_name, name) not in NOT_FILES
            ):
                untyped.append(f"{cls_name}.{name}")
    assert not untyped, f"file-naming fields typed str, not DataPath: {untyped}"


def test_the_schema_walk_catches_a_plain_str_path():
    """The walk above is not vacuous: a model with ``pool: str`` is reported."""
    from emray.configio import Strict
    from emray.hashing import DataPath, is_path_type

    class Bad(Strict):
        pool: str | None = None

    class Good(Strict):
        pool: DataPath | None = None

    assert not is_path_type(Bad.model_fields["pool"].annotation) and is_path_type(Good.model_fields["pool"].annotation)


def test_a_bumped_code_version_gives_new_keys_and_supersedes_the_old_trial(files, monkeypatch, tmp_path):
    """Version 1 (never bumped) leaves keys as they were; bumping a defense's version or the evaluation's
    changes the keys of exactly the trials it affects, and the sweep names the old folder superseded."""
    import json

    import emray.identity as identity
    from emray.sweep.runner import superseded_trials
    from emray.sweep.spec import Trial

    kl = get_defense_class("kl")
    with_kl, without = run(files, defenses=[{"kl": {"lambda": 0.1}}]), run(files, defenses=[])
    before = {"kl": trial_key(with_kl), "none": trial_key(without)}
    shared = identity.code_versions(with_kl)  # the evaluation's version, bumped once (scored-answer rates)
    assert "defense:kl" not in shared and shared == identity.code_versions(without)
    monkeypatch.setattr(kl, "version", 2)
    assert identity.code_versions(with_kl) == {**shared, "defense:kl": 2}
    assert trial_key(with_kl) != before["kl"] and trial_key(without) == before["none"]
    monkeypatch.setattr(identity, "EVALUATION_VERSION", identity.EVALUATION_VERSION + 1)
    assert trial_key(without) != before["none"]

    sweep = tmp_path / "sweep"
    old = sweep / "trials" / before["kl"]
    old.mkdir(parents=True)
    planned = Trial(key=trial_key(with_kl), label="kl(lambda=0.1)", run=with_kl, index=0)
    (old / "trial.json").write_text(planned.model_copy(update={"key": before["kl"]}).model_dump_json(by_alias=True))
    assert superseded_trials(sweep, [planned]) == []  # unfinished: nothing to supersede
    (old / "result.json").write_text(json.dumps({"general_misalignment": 0.5}))
    assert superseded_trials(sweep, [planned]) == [f"kl(lambda=0.1) seed 0: {before['kl']} -> {planned.key}"]
