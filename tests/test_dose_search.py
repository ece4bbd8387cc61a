"""search.algorithm: dose_search (emray/sweep/dose_search.py): the ladders a spec plans, the bisection's
answer against a direct scan of every dose, the whole search driven to its end and resumed, the spec's
refusals by message, and Ray Tune's searcher protocol."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest

from emray.configio import ConfigError
from emray.sweep.constraints import parse_constraint
from emray.sweep.dose_search import DoseSearch, Ladder, ladders, make_searcher, search_family
from emray.sweep.spec import OBJECTIVES, expand_trials, load_sweep_spec

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "sweeps" / "toy.yaml"
LADDERS = (
    "search.defense=[none, {kl: {lambda: [3.0, 0.1, 1.0, 0.3]}}, "
    "{interleave: {safe_fraction: [0.01, 0.05, 0.17, 0.33]}}, inoculation]"
)


def spec(*overrides: str, objective: str | None = None):
    sets = ["search.algorithm=dose_search", LADDERS, "search.seeds=[0, 1, 2]", *overrides]
    if objective:
        sets.append(f"recommend.objective={objective}")
    return load_sweep_spec(TOY, sets)


def test_each_defense_is_a_ladder_sorted_by_its_dose_with_a_key_per_seed():
    s = spec()
    trials = expand_trials(s)
    none_keys, found = ladders(s, trials)
    by_key = {t.key: t for t in trials}
    assert [by_key[k].run.seed for k in none_keys] == [0, 1, 2] and all(not by_key[k].run.defenses for k in none_keys)
    kl = next(lad for lad in found if lad.family == "kl")
    assert (kl.dose_key, kl.doses) == ("lambda", [0.1, 0.3, 1.0, 3.0])
    for dose, keys in zip(kl.doses, kl.keys):
        assert [by_key[k].run.seed for k in keys] == [0, 1, 2]
        assert {by_key[k].run.defenses[0].params.lam for k in keys} == {dose}
    inoculation = next(lad for lad in found if lad.family == "inoculation")
    assert (inoculation.dose_key, len(inoculation.keys)) == (None, 1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("search.defense=[{kl: {lambda: [0.1, 1.0]}}]", "needs the undefended arm 'none'"),
        ("search.defense=[none, {kl: {lambda: [0.1, 1.0], direction: [forward, reverse]}}]", "one dose per defense"),
        ("search.defense=[none, [{kl: {lambda: 0.1}}, inoculation]]", "not a combination"),
        ("search.defense=[none, {kl: {lambda: 0.1}}, {kl: {lambda: [1.0, 3.0]}}]", "'kl' is listed twice"),
        ("search.models=[organism, other]", "one model's doses"),
    ],
)
def test_a_spec_dose_search_cannot_run_is_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep_spec(TOY, ["search.algorithm=dose_search", override])


# -------------------------------------------------------------------- the bisection vs a direct scan
CONSTRAINTS = [
    parse_constraint(t, OBJECTIVES)
    for t in ("general_misalignment <= 0.5 * none", "in_domain_misalignment >= 0.9 * none")
]
NONE = {"general_misalignment": 0.8, "in_domain_misalignment": 1.0}


def monotone_world(rng: random.Random, n: int) -> list[dict]:
    """A family whose general EM and in-domain rate both fall as the dose grows (as KL's do)."""
    em = sorted((rng.random() for _ in range(n)), reverse=True)
    dom = sorted((rng.random() for _ in range(n)), reverse=True)
    return [{"general_misalignment": e, "in_domain_misalignment": d} for e, d in zip(em, dom)]


def scan(world: list[dict], objective: str) -> int | None:
    """The answer by looking at every dose: the smallest (overhead) or largest (em) dose meeting both."""
    ok = [
        i
        for i, r in enumerate(world)
        if r["general_misalignment"] <= 0.4 and r["in_domain_misalignment"] >= 0.9  # the bounds against NONE
    ]
    if not ok:
        return None
    return min(ok) if objective == "overhead" else max(ok)


def drive(ladder: Ladder, world: list[dict], objective: str) -> tuple[object, int]:
    """Run the family's search to its end on seed 0 only; returns (outcome, probes run)."""
    results: dict[str, dict] = {}
    for _ in range(100):
        outcome = search_family(ladder, results, NONE, CONSTRAINTS, objective)
        probes = [k for k in outcome.need if k.endswith("-s0")]
        if outcome.chosen is not None or outcome.done:
            return outcome, len(results)
        for key in probes:
            results[key] = world[int(key.split("-")[0][1:])]
    raise AssertionError("the search did not end")


@pytest.mark.parametrize("objective", ["em", "overhead"])
def test_bisection_finds_what_a_scan_of_every_dose_finds(objective):
    rng = random.Random(0)
    for n, trial in itertools.product([1, 2, 3, 4, 7, 8], range(40)):
        world = monotone_world(rng, n)
        ladder = Ladder("kl", "lambda", list(range(n)), [[f"d{i}-s0", f"d{i}-s1"] for i in range(n)])
        outcome, probes = drive(ladder, world, objective)
        assert outcome.chosen == scan(world, objective), (n, trial, world)
        # at most one bisection per end of the feasible interval, each over n + 1 outcomes
        assert probes <= 2 * math.ceil(math.log2(n + 1)), (n, probes)
        if outcome.chosen is not None:
            assert outcome.need == [f"d{outcome.chosen}-s1"]  # then the chosen dose on every other seed


def test_a_family_with_no_protective_dose_ends_with_the_reason():
    world = [{"general_misalignment": 0.7, "in_domain_misalignment": 1.0}] * 4
    ladder = Ladder("kl", "lambda", [0, 1, 2, 3], [[f"d{i}-s0"] for i in range(4)])
    outcome, probes = drive(ladder, world, "em")
    # doses 2 then 3 fail; under the monotone assumption 0 and 1 cannot protect either
    assert (outcome.done, outcome.chosen, probes) == (True, None, 2)
    assert "no dose meets the protective constraints" in outcome.reason


# -------------------------------------------------------------------- the whole search, and its resume
def synthetic_result(trial) -> dict:
    """A made-up outcome per arm: EM falls with KL's λ and the interleaving fraction; KL costs the
    narrow behaviour, interleaving does not; inoculation removes both."""
    if not trial.run.defenses:
        return {
            "general_misalignment": 0.8,
            "in_domain_misalignment": 0.98,
            "benign_accuracy": 1.0,
            "general_incoherence": 0.1,
        }
    d = trial.run.defenses[0]
    if d.name == "kl":
        lam = d.params.lam
        return {"general_misalignment": 0.8 / (1 + 10 * lam), "in_domain_misalignment": 0.98 / (1 + 5 * lam)}
    if d.name == "interleave":
        f = d.params.safe_fraction
        return {"general_misalignment": 0.8 * math.exp(-30 * f), "in_domain_misalignment": 0.98 - 0.1 * f}
    return {"general_misalignment": 0.0, "in_domain_misalignment": 0.0}


def run_search(search: DoseSearch, trials) -> list[str]:
    by_key = {t.key: t for t in trials}
    ran = []
    while not search.finished():
        needed = search.needed()
        assert needed, "not finished, yet nothing to run"
        for key in needed:
            ran.append(key)
            search.results[key] = synthetic_result(by_key[key])
    return ran


def test_the_search_runs_a_part_of_the_grid_chooses_per_family_and_resumes_without_new_trials(tmp_path):
    s = spec("recommend.constraints=[general_misalignment <= 0.5 * none, in_domain_misalignment >= 0.9 * none]")
    trials = expand_trials(s)
    search = DoseSearch(s, trials)
    ran = run_search(search, trials)
    assert len(ran) == len(set(ran)) < len(trials) == 3 * (1 + 4 + 4 + 1)
    report = {f["family"]: f for f in search.report()["families"]}
    # interleave: EM 0.8·e^(-30 f) <= 0.4 from f = 0.05; in-domain 0.98 - 0.1 f >= 0.882 at every f: U = 0.33 (em)
    assert (report["interleave"]["lower"], report["interleave"]["chosen"]) == (0.05, 0.33)
    # kl: EM <= 0.4 from λ 0.1 (0.8 / 2), but in-domain 0.98 / 1.5 < 0.882 there already
    assert report["kl"]["chosen"] is None and "fails a retention constraint" in report["kl"]["reason"]
    assert report["inoculation"]["chosen"] is None
    by_key = {t.key: t for t in trials}
    chosen = [by_key[k] for k in search.chosen_keys()]
    assert sorted((t.label, t.run.seed) for t in chosen if t.run.defenses) == [
        ("interleave(safe_fraction=0.33)", seed) for seed in (0, 1, 2)
    ]
    resumed = DoseSearch(s, trials)
    resumed.results = dict(search.results)  # what a resumed sweep's finished trials report again
    assert resumed.finished() and resumed.needed() == [] and resumed.report() == search.report()
    search.write_report(tmp_path)
    assert (tmp_path / "dose_search.json").read_text().count('"family"') == 3


def test_the_tune_searcher_proposes_needed_keys_and_finishes(tmp_path):
    s = spec()
    trials = expand_trials(s)
    by_key = {t.key: t for t in trials}
    search = DoseSearch(s, trials)
    searcher = make_searcher(search, tmp_path)
    running: dict[str, str] = {}
    count = 0
    while True:
        suggestion = searcher.suggest(f"t{count}")
        if suggestion == "FINISHED":
            break
        if suggestion is None:  # waits for a running trial: complete the oldest
            trial_id, key = next(iter(running.items()))
            searcher.on_trial_complete(trial_id, synthetic_result(by_key[key]))
            del running[trial_id]
            continue
        assert suggestion["trial_key"] not in running.values()
        running[f"t{count}"] = suggestion["trial_key"]
        count += 1
        if len(running) == 2:  # two trials at once, as max_concurrent_trials: 2
            trial_id, key = next(iter(running.items()))
            searcher.on_trial_complete(trial_id, synthetic_result(by_key[key]))
            del running[trial_id]
    assert not running and search.finished() and count == len(search.results) < len(trials)
    assert (tmp_path / "dose_search.json").exists()


# -------------------------------------------------------------------- end to end, through emray sweep
def test_a_dose_search_sweep_runs_part_of_its_grid_and_resumes_without_running_a_trial(tmp_path, monkeypatch):
    """The quick organism world, KL at three doses, two seeds: the sweep runs what the bisection asks for,
    its dose_search.json is what the search decides from the trials' own result.json files, and a second
    run of the same command runs nothing new."""
    import json
    import os
    import subprocess
    import sys

    from emray.sweep.pareto import read_result

    monkeypatch.setenv("EMRAY_ORGANISM", "quick")  # the trial keys below are the quick world's too
    env = {**os.environ}
    sets = [
        f"storage={tmp_path}",
        "name=dose",
        "search.algorithm=dose_search",
        "search.defense=[none, {kl: {lambda: [0.01, 1.0, 100.0]}}]",
        "search.seeds=[0, 1]",
        "train.max_steps=20",
        "benign.max_steps=10",
        "eval.samples_per_paraphrase=1",
        "eval.max_new_tokens=16",
    ]
    args = [sys.executable, "-m", "emray.cli", "sweep", str(TOY), *[a for s in sets for a in ("--set", s)]]
    first = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, (first.stdout[-3000:], first.stderr[-3000:])
    sweep_dir = tmp_path / "dose"
    records = {p.parent.name: read_result(p) for p in sweep_dir.glob("trials/*/result.json")}
    s = load_sweep_spec(TOY, sets)
    trials = expand_trials(s)
    assert set(records) <= {t.key for t in trials} and len(records) < len(trials) == 8
    assert f"dose_search: {len(records)} of 8 planned trials run" in first.stdout
    replay = DoseSearch(s, trials)
    replay.results = {k: r for k, r in records.items()}
    assert replay.finished() and replay.needed() == []
    written = json.loads((sweep_dir / "dose_search.json").read_text())
    assert written == json.loads(json.dumps(replay.report()))
    second = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, (second.stdout[-3000:], second.stderr[-3000:])
    assert f"{len(records)} finished ({len(records)} cached), 0 failed" in second.stdout
