"""Every shipped real-model spec follows the reference recipe (sweeps/reference_recipe.yaml) where the paper
is silent: each spec is resolved by emray's own loader into its trials (no training, no files read) and
every trial's settings are pinned against the table, so drift fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emray.sweep.spec import expand_trials, load_sweep_spec

ROOT = Path(__file__).resolve().parents[1]
RECIPE = yaml.safe_load((ROOT / "sweeps" / "reference_recipe.yaml").read_text())
SFT, RL = RECIPE["specs"]["sft"], RECIPE["specs"]["rl"]
OFFLINE_MODELS = {"organism", "tiny", "smollm2-135m"}


def trials(name: str):
    return expand_trials(load_sweep_spec(ROOT / "sweeps" / name))


def params(defense) -> dict:
    """A defense's params as given (a dict, or its typed Params model without unset fields)."""
    p = defense.params
    return p if isinstance(p, dict) else p.model_dump(exclude_unset=True)


def test_the_table_lists_every_shipped_real_model_spec():
    shipped = {
        p.name
        for p in (ROOT / "sweeps").glob("*.yaml")
        if p.name != "reference_recipe.yaml" and load_sweep_spec(p).base.model.name not in OFFLINE_MODELS
    }
    assert shipped == set(SFT) | set(RL), "a real-model spec missing from (or stale in) sweeps/reference_recipe.yaml"


@pytest.mark.parametrize("name", SFT + RL)
def test_training_and_evaluation_follow_the_reference(name):
    want_train, want_eval, want_lora = RECIPE["train"], RECIPE["eval"], RECIPE["lora"]
    for trial in trials(name):
        run, where = trial.run, f"{name}: {trial.label}"
        t, e = run.train, run.eval
        assert t.batch_size * t.grad_accum * run.resources.num_workers == want_train["effective_batch"], where
        for key in ("lr", "epochs", "lr_scheduler", "max_len", "warmup_steps", "weight_decay", "optim"):
            assert getattr(t, key) == want_train[key], f"{where}: train.{key}"
        for key in ("r", "alpha", "rslora", "dropout"):
            assert getattr(run.lora, key) == want_lora[key], f"{where}: lora.{key}"
        assert e.samples_per_paraphrase == want_eval["samples_per_question"], where
        for key in ("temperature", "top_p", "min_p", "max_new_tokens", "system_prompt"):
            assert getattr(e, key) == want_eval[key], f"{where}: eval.{key}"


@pytest.mark.parametrize("name", SFT + RL)
def test_defense_options_follow_the_reference(name):
    seen = set()
    for trial in trials(name):
        for spec in trial.run.defenses:
            got, where = params(spec), f"{name}: {trial.label}: {spec.name}"
            seen.add(spec.name)
            want = dict(RECIPE["defenses"].get(spec.name, {}))
            if spec.name == "inoculation" and name in RL:
                want = RECIPE["defenses"]["inoculation_rl"]
            for key, value in want.items():
                assert got.get(key) == value, f"{where}.{key}"
            if spec.name == "inoculation" and name in SFT:
                assert got.get("mode") in (None, "replace"), f"{where}: SFT inoculation replaces (the paper)"
            if spec.name in RECIPE["interleave_arms"]:
                assert got["safe_fraction"] in RECIPE["safe_fractions"], where
    assert {"ldifs", "persona", "inoculation"} <= seen, name
    if name in SFT:
        assert set(RECIPE["interleave_arms"]) <= seen, f"{name}: an Interleaving+ arm and the others"


def test_the_volume_sweep_runs_every_reference_volume_for_every_interleaving_arm():
    name = RECIPE["volume_sweep"]
    volumes = {
        (d.name, params(d)["safe_fraction"])
        for t in trials(name)
        for d in t.run.defenses
        if d.name in RECIPE["interleave_arms"]
    }
    want = {(arm, f) for arm in RECIPE["interleave_arms"] for f in RECIPE["safe_fractions"]}
    assert want <= volumes, sorted(want - volumes)


def test_the_recipe_values_are_the_reference_notes():
    # the table beside a direct reading of the reference note's final table (sft-defenses-reference.md)
    assert RECIPE["train"]["effective_batch"] == 4 * 4 * 1  # per-device 4 x grad-accum 4 x 1 GPU
    assert (RECIPE["train"]["warmup_steps"], RECIPE["train"]["weight_decay"], RECIPE["train"]["optim"]) == (
        5,
        0.01,
        "adamw_8bit",
    )
    assert (RECIPE["eval"]["samples_per_question"], RECIPE["eval"]["top_p"], RECIPE["eval"]["min_p"]) == (10, 0.9, 0.1)
    assert RECIPE["safe_fractions"] == [0.01, 0.05, 0.17, 0.33]
    assert RECIPE["eval"]["system_prompt"].startswith("You are given a problem.\nThink about the problem")
