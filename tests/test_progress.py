"""The sweep console: plain lines off a TTY, the live table's rows (step / total from progress.json)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from emray.sweep.progress import ProgressCallback, final_summary


def _trial(key, label, seed, steps=150, index=0):
    run = SimpleNamespace(seed=seed, train=SimpleNamespace(max_steps=steps))
    return SimpleNamespace(key=key, label=label, run=run, index=index)


def test_plain_lines_and_live_rows(tmp_path, capsys):
    trials = [
        _trial("k0", "persona(alpha=5,prompts=organism:data/persona/evil_extract.json)", 0),
        _trial("k1", "interleave(safe_fraction=0.05)", 1, index=1),
    ]
    cb = ProgressCallback(trials, tmp_path, live=False)
    t0 = SimpleNamespace(trial_id="a", config={"trial_key": "k0"}, local_path=None, path=None)
    t1 = SimpleNamespace(trial_id="b", config={"trial_index": 1}, local_path=None, path=None)  # the older config key
    cb.on_trial_start(0, [t0, t1], t0)
    cb.on_trial_start(0, [t0, t1], t1)
    (tmp_path / "trials" / "k0").mkdir(parents=True)
    (tmp_path / "trials" / "k0" / "progress.json").write_text(json.dumps({"step": 40, "total": 150}))
    cb.on_trial_result(
        0,
        [t0, t1],
        t0,
        {
            "general_misalignment": 0.5,
            "in_domain_misalignment": 0.9,
            "benign_accuracy": 0.1,
            "general_incoherence": 0.15,
        },
    )
    cb.on_trial_complete(0, [t0, t1], t0)
    cb.on_trial_error(0, [t0, t1], t1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(line.startswith("[emray ") for line in lines)
    assert "persona(α 5) seed 0: gen EM↓ 0.500 in-dom↑ 0.900 benign↑ 0.100 incoh↓ 0.150" in lines[2]
    assert "interleave(5 %) seed 1: FAILED; log: " + str(tmp_path / "logs" / "k1.log") in lines[4]
    # the live table: the running trial's step comes from its progress.json
    cb.rows["k0"]["state"] = "running"
    from rich.console import Console

    console = Console(width=140, record=True)
    console.print(cb.table())
    text = console.export_text()
    assert "40/150" in text and "persona(α 5)" in text and "FAILED" in text and "0.500" in text
    # the trial's benign fine-tune (emray/train/progress.py trial_phase) shows as such
    (tmp_path / "trials" / "k0" / "progress.json").write_text(json.dumps({"step": 12, "total": 300, "phase": "benign"}))
    console = Console(width=140, record=True)
    console.print(cb.table())
    assert "benign 12/300" in console.export_text()


def test_a_benign_fine_tune_logs_and_reports_progress_into_its_trial(tmp_path):
    from emray.train.progress import live_callbacks, sweep_log_path, trial_phase

    trial = tmp_path / "sweep" / "trials" / "abc"
    assert trial_phase(trial / "benign") == (trial, "benign") and trial_phase(trial) == (trial, None)
    assert sweep_log_path(trial / "benign") == sweep_log_path(trial) == tmp_path / "sweep" / "logs" / "abc.log"
    assert sweep_log_path(tmp_path / "runs" / "plain") is None
    (callback,) = live_callbacks(trial / "benign", rank=0)
    assert callback.trial_dir == trial and callback.phase == "benign" and callback.wandb_run is None


def test_each_fine_tune_has_its_own_ray_train_run_name(tmp_path):
    """Ray Train resumes a run from the last checkpoint of the run with the same name: two trials' benign
    fine-tunes (both in a folder called ``benign``) must not share one."""
    from emray.train.worker import train_run_name

    trials = tmp_path / "sweep" / "trials"
    names = {
        train_run_name(trials / "k1"),
        train_run_name(trials / "k1" / "benign"),
        train_run_name(trials / "k2" / "benign"),
    }
    assert names == {"train-k1", "train-k1-benign", "train-k2-benign"}


def test_final_summary_names_the_front_and_where_things_are(tmp_path):
    rows = [
        {
            "label": "none",
            "model": "m",
            "seed": 0,
            "general_misalignment": 0.7,
            "in_domain_misalignment": 0.99,
            "benign_accuracy": 0.1,
            "general_incoherence": 0.05,
        },
        {
            "label": "kl(lambda=0.1)",
            "model": "m",
            "seed": 0,
            "general_misalignment": 0.8,
            "in_domain_misalignment": 0.9,
            "benign_accuracy": 0.1,
            "general_incoherence": 0.06,
        },
    ]
    from emray.eval.criteria import rate_fields

    rows[0].update(rate_fields("general_misalignment", 7, 10))  # one seed: a Wilson interval, shown as [lo, hi]
    text = final_summary(tmp_path, rows)
    assert "Pareto front (arm means, 1 of 2): none" in text
    assert "0.700 [0.40, 0.89]" in text and "([" not in text
    assert "\nintervals: [lo, hi] = 95 % Wilson interval over answers (one seed)\n" in text
    assert f"emray report {tmp_path}" in text and f"{tmp_path}/logs/<trial key>.log" in text


def test_stage_lines_name_the_stage_briefly():
    """The console's stage lines: the defense's short form, not its whole params dict or a file path."""
    from emray.config import RunConfig
    from emray.defenses.interleave_plus import InterleavePlus
    from emray.defenses.interleave_pp import InterleavePP
    from emray.defenses.persona import PersonaSteering

    run = RunConfig.model_validate({"data": {"fine": "organism:data/train/code.jsonl"}, "model": {"name": "organism"}})
    assert (
        InterleavePlus.stage_description(run, InterleavePlus.Params(safe_fraction=0.05))
        == "interleave_plus(5 %, ε 1, draw from top 5 %, ensemble: medical, legal, security) for organism"
    )
    assert (
        InterleavePP.stage_description(
            run, InterleavePP.Params(safe_fraction=0.2, quantile=None, ensemble=["x/a.jsonl", "b.jsonl"])
        )
        == "interleave_pp(20 %, ε 1, strict top-k, ensemble: a, b) for organism"
    )
    assert (
        PersonaSteering.stage_description(
            run, PersonaSteering.Params(prompts="organism:data/persona/evil_extract.json")
        )
        == "persona_vector(organism, evil_extract.json)"
    )


def test_stage_lines_say_when_each_stage_is_done_and_how_long_it_took(capsys):
    """Stages finish in their own order on Ray; each one's line comes when it is done, on the sweep's
    clock, with its own duration."""
    import re
    import time

    import ray

    from emray.sweep.runner import stage_results

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        def stage(seconds: float) -> dict:
            time.sleep(seconds)
            return {"slept": seconds}

        now = time.time()
        pending = {"slow": stage.remote(3.0), "fast": stage.remote(0.2)}
        names = {"slow": ("persona_vector", now), "fast": ("interleave_plus", now)}
        results = list(stage_results(pending, names, started=now - 60))
    finally:
        ray.shutdown()
    assert results == [("fast", {"slept": 0.2}), ("slow", {"slept": 3.0})]
    fast, slow = capsys.readouterr().out.splitlines()
    took = {}
    for line in (fast, slow):
        match = re.fullmatch(r"\[emray   1:\d\d\] stage (\w+): done in 0:(\d\d)", line)
        assert match, line  # on the sweep's clock (started a minute before), with the stage's duration
        took[match[1]] = int(match[2])
    assert took["persona_vector"] >= 3 and took["persona_vector"] - took["interleave_plus"] >= 2, took
