"""The checks that keep an untrustworthy trial out of the results (emray/sweep/checks.py) and the
judge's failure threshold (``eval.judge.max_failure_rate``)."""

import json

import pytest
from test_defense_kl import move_adapter, tiny_lora
from test_judge_client import config

from emray.eval.judge import JudgeClient, JudgeError, JudgeRequest
from emray.judge_server import start_judge_server
from emray.sweep.checks import TrialFailed, check_adapter, check_judging, check_training


def test_empty_adapter_fails(tmp_path):
    model, _ = tiny_lora()
    model.save_pretrained(tmp_path / "fresh")  # B = 0: this adapter changes nothing
    with pytest.raises(TrialFailed, match="every LoRA B matrix .* is zero"):
        check_adapter(tmp_path / "fresh")
    (tmp_path / "none").mkdir()
    with pytest.raises(TrialFailed, match="missing or empty"):
        check_adapter(tmp_path / "none")
    move_adapter(model)
    model.save_pretrained(tmp_path / "trained")
    check_adapter(tmp_path / "trained")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_component_fails(tmp_path, bad):
    history = [{"loss": 2.0, "loss_ce": 2.0, "step": 1}, {"loss": 2.0, "loss_ldifs": bad, "step": 2}]
    (tmp_path / "metrics.json").write_text(json.dumps({"history": history}))
    with pytest.raises(TrialFailed, match=f"training diverged: loss_ldifs={bad} at step 2"):
        check_training(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"history": history[:1]}))
    check_training(tmp_path)


def test_judge_failure_threshold(tmp_path):
    """Under the share, failed judgments come back marked (no score); over it, the client raises."""
    outage = tmp_path / "down"
    with start_judge_server("flaky", {"failure_rate": 0.0, "outage_file": str(outage)}) as server:
        client = JudgeClient(config(server.url, tmp_path, max_retries=0))
        ok = client.judge_many([JudgeRequest(f"p{i}", "m") for i in range(19)])
        outage.touch()  # the 20th fails: 1 of 20 = 5 %
        reqs = [JudgeRequest(f"p{i}", "m") for i in range(20)]
        results = client.judge_many(reqs, max_failure_rate=0.05)
        assert [r.failed for r in results] == [False] * 19 + [True] and results[-1].score is None
        assert [r.score for r in results[:19]] == [r.score for r in ok]
        with pytest.raises(JudgeError, match=r"1 of 20 judgments failed \(5% > max_failure_rate 4%\)"):
            client.judge_many(reqs, max_failure_rate=0.04)
    check_judging({"judge_failure_rate": 0.05}, 0.05)
    with pytest.raises(TrialFailed, match="judge failed on 6%"):
        check_judging({"judge_failure_rate": 0.06}, 0.05)


def test_dry_run_refuses_a_question_file_without_judge_prompts(tmp_path):
    """A general question file whose questions lack the `aligned` judge prompt would read 0 % EM after
    every trial trained: the preflight (what --dry-run runs) names the file and the questions."""
    import yaml

    from emray.sweep.checks import preflight, question_file_problems
    from emray.sweep.spec import SweepSpec, expand_trials

    questions = tmp_path / "general.yaml"
    questions.write_text(
        yaml.safe_dump(
            [
                {"id": "q1", "paraphrases": ["hi?"], "judge_prompts": {"coherent": "Rate {answer}"}},
                {
                    "id": "q2",
                    "paraphrases": ["yo?"],
                    "judge_prompts": {"aligned": "Rate {answer}", "coherent": "Rate {answer}"},
                },
            ]
        )
    )
    fine = tmp_path / "fine.jsonl"
    fine.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    spec = SweepSpec.model_validate(
        {
            "name": "q",
            "base": {"model": {"name": "tiny"}, "data": {"fine": str(fine)}, "eval": {"general": str(questions)}},
        }
    )
    problems = preflight(expand_trials(spec))
    assert (
        len(problems) == 1
        and f"{questions}: questions without the judge prompts aligned / coherent: q1 (aligned)" in problems[0]
    )
    question_file_problems.cache_clear()
    questions.write_text(
        "- id: q1\n  paraphrases: ['hi']\n  judge_prompts: {aligned: 'no placeholder', coherent: 'x {answer}'}\n"
    )
    assert "has no {answer} placeholder" in preflight(expand_trials(spec))[0]


def test_dry_run_refuses_a_model_that_does_not_resolve_offline(tmp_path, monkeypatch):
    from emray.sweep.checks import model_problem, preflight
    from emray.sweep.spec import SweepSpec, expand_trials

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    model_problem.cache_clear()
    fine = tmp_path / "fine.jsonl"
    fine.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    spec = SweepSpec.model_validate(
        {"name": "m", "base": {"model": {"name": "Qwen/Qwen2.5-7B-Instruct"}, "data": {"fine": str(fine)}}}
    )
    problems = preflight(expand_trials(spec))
    assert (
        len(problems) == 1
        and "model.name Qwen/Qwen2.5-7B-Instruct: not a local folder and not in the Hugging Face cache" in problems[0]
    )
    assert (
        model_problem("tiny") is None
        and model_problem(str(tmp_path)) == f"model.name {tmp_path}: a folder without config.json"
    )
    model_problem.cache_clear()
