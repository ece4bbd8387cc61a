"""analysis/ablations.py: the dose of each family read from the trials' parameters, its cells against a
direct computation, the benign step-budget table, and the figure."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

from emray.eval.criteria import rate_fields, wilson_interval
from emray.sweep.pareto import load_results

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ablations", ROOT / "analysis" / "ablations.py")
ablations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablations)

# label -> (defense, its resolved params, per seed: (general misaligned of 96, in-domain of 120, benign of 60))
ARMS = {
    "none": (None, None, [(80, 118, 60), (84, 117, 59)]),
    "kl(lambda=0.3)": ("kl", {"lambda": 0.3, "direction": "forward"}, [(60, 110, 58), (70, 112, 60)]),
    "kl(lambda=3)": ("kl", {"lambda": 3.0, "direction": "forward"}, [(5, 20, 30), (9, 24, 36)]),
    "kl(lambda=1)": ("kl", {"lambda": 1.0, "direction": "forward"}, [(30, 70, 50), (20, 60, 52)]),
}


def write(root: Path, arms: dict, benign_steps: int = 300) -> Path:
    sweep = root / f"abl-{benign_steps}"
    for index, (label, (name, params, seeds)) in enumerate(arms.items()):
        for seed, (gen, dom, ben) in enumerate(seeds):
            record = {
                "trial_key": f"{index}{seed}" * 8,
                "trial_index": index,
                "label": label,
                "model": "organism",
                "seed": seed,
                "defenses": [] if params is None else [{"name": name, "params": params}],
            }
            record.update(rate_fields("general_misalignment", gen, 96))
            record.update(rate_fields("in_domain_misalignment", dom, 120))
            record.update(rate_fields("benign_accuracy", ben, 60))
            trial = sweep / "trials" / record["trial_key"]
            trial.mkdir(parents=True)
            (trial / "result.json").write_text(json.dumps(record))
    (sweep / "spec.json").write_text(json.dumps({"name": sweep.name, "base": {"benign": {"max_steps": benign_steps}}}))
    return sweep


def test_the_dose_is_the_one_parameter_that_varies_and_arms_sort_by_it(tmp_path):
    arms = ablations.ablation_arms(load_results(write(tmp_path, ARMS)))
    assert [(a["family"], a["dose_key"], a["dose"]) for a in arms] == [
        ("none", None, None),
        ("kl", "lambda", 0.3),
        ("kl", "lambda", 1.0),
        ("kl", "lambda", 3.0),
    ]


def test_cells_are_the_seed_mean_and_std_and_the_pooled_wilson_interval(tmp_path):
    table = ablations.markdown_table(ablations.ablation_arms(load_results(write(tmp_path, ARMS))))
    row = next(line for line in table.splitlines() if line.startswith("| kl | lambda 1.0 |"))
    rates = [30 / 96, 20 / 96]
    assert f"{statistics.mean(rates):.3f} ± {statistics.stdev(rates):.3f}" in row
    lo, hi = wilson_interval(50, 192)
    assert row.endswith(f"| 50/192 [{lo:.2f}, {hi:.2f}] |")


def test_two_varying_parameters_in_a_family_are_refused_by_name(tmp_path):
    arms = {**ARMS, "kl(lambda=1,direction=reverse)": ("kl", {"lambda": 1.0, "direction": "reverse"}, [(1, 2, 3)])}
    with pytest.raises(ValueError, match=r"family kl: more than one parameter varies .*direction, lambda"):
        ablations.ablation_arms(load_results(write(tmp_path, arms)))


def test_benign_table_puts_each_budget_in_its_own_column(tmp_path):
    short = {label: (name, p, [(g, d, b // 3) for g, d, b in seeds]) for label, (name, p, seeds) in ARMS.items()}
    sweeps = [
        (300, ablations.ablation_arms(load_results(write(tmp_path, ARMS, 300)))),
        (100, ablations.ablation_arms(load_results(write(tmp_path, short, 100)))),
    ]
    table = ablations.benign_learning_table(sweeps).splitlines()
    assert table[0] == "| arm | 100 steps | 300 steps |"
    kl3 = next(line for line in table if line.startswith("| kl(λ 3) |"))
    at_100, at_300 = [10 / 60, 12 / 60], [30 / 60, 36 / 60]
    assert kl3 == (
        f"| kl(λ 3) | {statistics.mean(at_100):.3f} ± {statistics.stdev(at_100):.3f} "
        f"| {statistics.mean(at_300):.3f} ± {statistics.stdev(at_300):.3f} |"
    )


def test_main_prints_the_table_and_draws_the_figure(tmp_path, capsys):
    sweep = write(tmp_path, ARMS)
    ablations.main([str(sweep)])
    out = capsys.readouterr().out
    assert "| kl | lambda 3.0 | 2 |" in out
    png = sweep / "plots" / "ablation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "name, trials",
    [("volume", 3 * (1 + 3 * 5)), ("dose", 3 * (1 + 4 + 4)), ("inoculation", 3 * 4)],
)
def test_the_shipped_ablation_specs_expand_to_their_documented_trials(name, trials):
    from emray.sweep.spec import expand_trials, load_sweep_spec

    spec = load_sweep_spec(ROOT / "sweeps" / "organism-ablations" / f"{name}.yaml")
    expanded = expand_trials(spec)
    assert len(expanded) == trials  # the counts docs/organism.md "Ablations" gives
    assert sorted({t.run.seed for t in expanded}) == [0, 1, 2]
