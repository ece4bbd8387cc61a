import subprocess
import sys
from pathlib import Path

import pytest

from emray.configio import ConfigError
from emray.sweep.pareto import dominates, format_table, pareto_flags
from emray.sweep.spec import expand_trials, load_sweep_spec

ROOT = Path(__file__).resolve().parents[1]

SPEC = """\
name: t
base:
  model: {name: tiny}
  data: {fine: x.jsonl}
search:
  defense:
    - none
    - {inoculation: {prompt: [a, b]}}
    - [inoculation, none]
  seeds: [0, 1]
"""


def test_grid_expands_lists_times_seeds(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    trials = expand_trials(load_sweep_spec(path))
    labels = sorted((t.label, t.run.seed) for t in trials)
    # none x2 seeds, inoculation(a|b) x2 seeds; the combination [inoculation(default), none]
    # equals a plain inoculation arm with the default prompt: a distinct config, so its own trials.
    assert len(trials) == 2 + 4 + 2
    assert ("inoculation(prompt=a)", 0) in labels and ("none", 1) in labels
    assert len({t.key for t in trials}) == len(trials)
    # keys are content hashes: the same spec expands to the same keys
    assert [t.key for t in expand_trials(load_sweep_spec(path))] == [t.key for t in trials]


def test_override_addresses_base_config(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    spec = load_sweep_spec(path, ["model.name=smollm2-135m", "name=other"])
    assert spec.base.model.name == "smollm2-135m" and spec.name == "other"
    assert all(t.run.model.name == "smollm2-135m" for t in expand_trials(spec))


def test_bad_spec_errors_name_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SPEC.replace("seeds: [0, 1]", "seeds: [0, 1]\n  algoritm: grid"))
    with pytest.raises(ConfigError, match=r"s.yaml:11: key 'search.algoritm': unknown key"):
        load_sweep_spec(path)
    path.write_text(SPEC.replace("prompt: [a, b]", "promt: [a, b]"))
    with pytest.raises(ConfigError, match=r"inoculation\.promt"):
        load_sweep_spec(path)
    path.write_text(SPEC.replace("prompt: [a, b]", "prompt: {min: 1, max: 2}"))
    with pytest.raises(ConfigError, match="a range needs algorithm random or optuna"):
        load_sweep_spec(path)


def test_random_search_is_seeded(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SPEC.replace("search:\n", "search:\n  algorithm: random\n  num_samples: 5\n"))
    a = [t.key for t in expand_trials(load_sweep_spec(path))]
    b = [t.key for t in expand_trials(load_sweep_spec(path))]
    assert a == b and 1 <= len(a) <= 5


def test_pareto_flags_match_brute_force():
    import random

    rng = random.Random(0)
    rows = [
        {
            "general_misalignment": rng.random(),
            "in_domain_misalignment": rng.random(),
            "benign_accuracy": rng.random(),
            "general_incoherence": rng.random(),
        }
        for _ in range(40)
    ]
    flags = pareto_flags(rows)
    for i, r in enumerate(rows):
        dominated = False
        for j, o in enumerate(rows):
            if i == j:
                continue
            better_eq = (
                o["general_misalignment"] <= r["general_misalignment"]
                and o["in_domain_misalignment"] >= r["in_domain_misalignment"]
                and o["benign_accuracy"] >= r["benign_accuracy"]
                and o["general_incoherence"] <= r["general_incoherence"]
            )
            strictly = (
                o["general_misalignment"] < r["general_misalignment"]
                or o["in_domain_misalignment"] > r["in_domain_misalignment"]
                or o["benign_accuracy"] > r["benign_accuracy"]
                or o["general_incoherence"] < r["general_incoherence"]
            )
            dominated |= better_eq and strictly
        assert flags[i] == (not dominated)
    assert any(flags) and not all(flags)


def test_pareto_hand_cases():
    a = {"general_misalignment": 0.1, "in_domain_misalignment": 0.9, "benign_accuracy": 0.5, "general_incoherence": 0.1}
    b = {**a, "general_misalignment": 0.2}  # worse on one, equal elsewhere: dominated
    c = {**a, "general_misalignment": 0.05, "benign_accuracy": 0.1}  # a trade-off: on the front
    d = {**a, "benign_accuracy": None}  # missing a criterion: never on the front
    assert pareto_flags([a, b, c, d]) == [True, False, True, False]
    assert pareto_flags([a, dict(a)]) == [True, True]  # equal points do not dominate each other
    assert dominates([0, 0], [0, 1]) and not dominates([0, 1], [1, 0])
    assert "general_misalignment" in format_table([{**a, "label": "x", "is_pareto": True}])


@pytest.mark.parametrize("name", ["qwen2.5-7b-code.yaml", "qwen2.5-32b-all.yaml", "paper-table.yaml", "toy.yaml"])
def test_shipped_specs_dry_run(name):
    cluster = "qwen" in name or "paper" in name  # their data lives on the cluster's /mnt/shared
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", "sweep", str(ROOT / "sweeps" / name), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if cluster:  # here, the preflight names the missing cluster files and refuses
        assert out.returncode == 2 and "/mnt/shared/" in out.stderr and "no such file" in out.stderr, out.stderr[-2000:]
        out = subprocess.run(
            [sys.executable, "-m", "emray.cli", "sweep", str(ROOT / "sweeps" / name), "--dry-run", "--no-file-check"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    if "qwen" in name or "paper" in name:
        assert "DeepSpeed ZERO" in out.stdout
    assert "trials" in out.stdout
    # Interleaving+/++ as the reference ran them: the customer's code domain held out of the ensemble
    stages = [line for line in out.stdout.splitlines() if "safe_selection: interleave_p" in line]
    assert stages and all("draw from top 5 %, ensemble: medical, legal, security" in line for line in stages), stages


def test_optuna_space_proposes_valid_trials(tmp_path):
    """The define-by-run space Optuna samples maps back to concrete, validated trials."""
    import optuna

    from emray.sweep.runner import optuna_space, trial_from_optuna

    path = tmp_path / "s.yaml"
    path.write_text(
        SPEC.replace("search:\n", "search:\n  algorithm: optuna\n  num_samples: 6\n").replace(
            "{inoculation: {prompt: [a, b]}}",
            "[{inoculation: {prompt: [a, b]}}, {interleave: {safe_fraction: {min: 0.01, max: 0.2, log: true}}}]",
        )
    )
    spec = load_sweep_spec(path)
    study = optuna.create_study(
        directions=["minimize", "maximize", "maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    seen = set()
    for _ in range(12):
        trial = study.ask()
        optuna_space(spec)(trial)
        made = trial_from_optuna(spec, trial.params)
        seen.add("combination" if "+interleave" in made.label else made.label.split("(")[0])
        if "+interleave" in made.label:
            fraction = made.run.defenses[1].params.safe_fraction
            assert 0.01 <= fraction <= 0.2
            assert made.run.defenses[0].params.prompt in {"a", "b"}
        assert made.run.seed in (0, 1)
    assert {"none", "combination"} <= seen


def test_toy_sweep_finetune_matches_the_organism_study():
    """The organism study's SWEEP_LORA is documented as the toy sweep's fine-tune: keep the two in step."""
    from emray.em_study import SWEEP_LORA

    base = load_sweep_spec(ROOT / "sweeps" / "toy.yaml").base
    assert (base.lora.r, base.lora.alpha, base.lora.rslora) == (
        SWEEP_LORA["r"],
        SWEEP_LORA["alpha"],
        SWEEP_LORA["rslora"],
    )
    assert (base.train.lr, base.train.batch_size, base.train.max_len) == (
        SWEEP_LORA["lr"],
        SWEEP_LORA["batch_size"],
        SWEEP_LORA["max_len"],
    )
