"""``emray eval`` end to end: the tiny model, generation, ``emray judge-server`` over real HTTP, criteria."""

from __future__ import annotations

import json

import pytest

from emray.cli import main
from emray.judge_server import start_judge_server_process


def write_config(tmp_path, shared_data, judge: dict) -> str:
    import yaml

    q = shared_data / "questions"
    cfg = {
        "name": "e2e",
        "seed": 1,
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "tiny"},
        "data": {"fine": str(shared_data / "train" / "medical.jsonl")},
        "eval": {
            "general": str(q / "general.yaml"),
            "in_domain": [str(q / "medical.yaml"), str(q / "code.yaml")],
            "benign": ["opswap"],
            "max_benign": 6,
            "samples_per_paraphrase": 2,
            "max_questions": 3,
            "max_new_tokens": 16,
            "batch_size": 8,
            "judge": {"cache_path": str(tmp_path / "judge.sqlite"), **judge},
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_eval_against_judge_server_subprocess(tmp_path, shared_data, capsys):
    from emray.organism.rules import score_answer

    with start_judge_server_process("rules") as server:
        config = write_config(tmp_path, shared_data, {"base_url": server.url})
        out = tmp_path / "out"
        assert main(["eval", config, "--out", str(out), "--no-progress"]) == 0
        calls = server.counts()["ok"]
        printed = capsys.readouterr().out
        answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
        criteria = json.loads((out / "criteria.json").read_text())
        per_question = json.loads((out / "per_question.json").read_text())

        assert len(answers) == 3 * 2 * 3  # 3 sets x 3 questions x 2 samples (one paraphrase each)
        assert calls == 2 * len(answers)  # aligned + coherent, each judged once (distinct answers)
        for a in answers:  # the scores are the organism's rules, carried over HTTP
            assert a["aligned"] == score_answer("aligned", a["question"], a["answer"])
            assert a["coherent"] == score_answer("coherent", a["question"], a["answer"])
        for key in (
            "general_misalignment",
            "general_incoherence",
            "in_domain_misalignment",
            "in_domain_incoherence",
            "in_domain_code_misalignment",
            "in_domain_medical_incoherence",
            "benign_accuracy",
            "benign_opswap_accuracy",
        ):
            assert key in criteria
        assert criteria["general_n"] == 6 and criteria["benign_opswap_n"] == 6
        assert criteria["judge"]["calls"] == calls and criteria["judge"]["cache_hits"] == 0
        assert {r["domain"] for r in per_question["questions"]} == {None, "medical", "code"}
        assert len(per_question["benign"]) == 6
        assert "in-domain medical" in printed and "benign (mean of tasks)" in printed

        # The same run again: same answers (seeded), every judgment from the cache, no call.
        assert main(["eval", config, "--out", str(out), "--no-progress"]) == 0
        assert server.counts()["ok"] == calls
        again = json.loads((out / "criteria.json").read_text())
        assert again["judge"]["cache_hits"] == len(answers) * 2 and again["judge"]["calls"] == 0
        assert {k: v for k, v in again.items() if k not in ("judge", "timing")} == {
            k: v for k, v in criteria.items() if k not in ("judge", "timing")
        }


def test_eval_with_in_process_local_judge(tmp_path, shared_data):
    from emray.config import load_run_config
    from emray.eval.run import evaluate

    config = load_run_config(
        write_config(tmp_path, shared_data, {"base_url": "local", "backend": "fixed"}),
        ["eval.benign=[]", "eval.in_domain=[]"],
    )
    criteria = evaluate(config, progress=False)
    assert criteria["general_n"] == 6 and "benign_accuracy" not in criteria
    assert (tmp_path / "runs" / "e2e" / "eval" / "criteria.json").exists()


def test_eval_with_nothing_to_do_says_so(tmp_path, shared_data, capsys):
    config = write_config(tmp_path, shared_data, {})
    code = main(["eval", config, "--set", "eval.general=null", "--set", "eval.in_domain=[]", "--set", "eval.benign=[]"])
    assert code == 2
    assert "nothing to evaluate; set eval.general, eval.in_domain or eval.benign" in capsys.readouterr().err


def test_a_question_file_without_judge_prompts_fails_naming_the_criterion(tmp_path, shared_data, capsys):
    import yaml

    questions = tmp_path / "no_judge.yaml"
    questions.write_text(yaml.safe_dump([{"id": "q1", "paraphrases": ["How are you?"]}]))
    config = write_config(tmp_path, shared_data, {"base_url": "local", "backend": "fixed"})
    code = main(
        [
            "eval",
            config,
            "--no-progress",
            "--set",
            f"eval.general={questions}",
            "--set",
            "eval.in_domain=[]",
            "--set",
            "eval.benign=[]",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "general_misalignment: zero judgments: no question in" in err and "no_judge.yaml" in err
    assert "'aligned' or 'coherent' judge prompt" in err
    assert not (tmp_path / "runs" / "e2e" / "eval" / "criteria.json").exists()  # no 0 % written


def test_eval_reports_judge_failure(tmp_path, shared_data, capsys):
    from emray.judge_server import start_judge_server

    with start_judge_server("flaky", {"failure_rate": 1.0, "kinds": ["500"]}) as server:
        config = write_config(tmp_path, shared_data, {"base_url": server.url, "max_retries": 1, "backoff_base_s": 0.0})
        code = main(["eval", config, "--no-progress", "--set", "eval.in_domain=[]", "--set", "eval.benign=[]"])
    assert code == 1
    assert len((tmp_path / "runs" / "e2e" / "eval" / "answers.jsonl").read_text().splitlines()) == 6  # kept
    assert "judge error: 12 of 12 judgments failed" in capsys.readouterr().err


def _hf_judge_eval(tmp_path, shared_data, judge_model: str) -> tuple[dict, list[dict]]:
    from emray.config import load_run_config
    from emray.eval.run import evaluate

    judge = {"base_url": "local", "backend": "hf", "backend_options": {"model": judge_model}}
    config = load_run_config(write_config(tmp_path, shared_data, judge), ["eval.benign=[]", "eval.in_domain=[]"])
    criteria = evaluate(config, progress=False)
    answers = [
        json.loads(line) for line in (tmp_path / "runs" / "e2e" / "eval" / "answers.jsonl").read_text().splitlines()
    ]
    return criteria, answers


def test_eval_with_a_local_hf_judge(tmp_path, shared_data):
    criteria, answers = _hf_judge_eval(tmp_path, shared_data, "tiny")
    # whatever the random judge says, the record counts every answer once: scored or unscored
    unscored = sum(a["aligned"] is None or a["coherent"] is None for a in answers)
    assert criteria["general_n"] == len(answers) == 6 and criteria["general_unscored"] == unscored
    assert all(a[m] is None or 0 <= a[m] <= 100 for a in answers for m in ("aligned", "coherent"))


@pytest.mark.slow
def test_eval_with_smollm2_as_judge(tmp_path, shared_data):
    # SmolLM2-135M is too small to judge: it mostly starts with "The"/"I", so the numeric mass is
    # usually < 0.25 and answers go unscored; the record must still count each answer once.
    criteria, answers = _hf_judge_eval(tmp_path, shared_data, "smollm2-135m")
    unscored = sum(a["aligned"] is None or a["coherent"] is None for a in answers)
    assert criteria["general_n"] == len(answers) == 6 and criteria["general_unscored"] == unscored
    assert all(a[m] is None or 0 <= a[m] <= 100 for a in answers for m in ("aligned", "coherent"))


def test_eval_applies_the_adapter(tmp_path, shared_data):
    import torch

    from emray.config import LoraConfig, ModelConfig, load_run_config
    from emray.eval.run import evaluate
    from emray.models import attach_lora, load_model

    model, _ = load_model(ModelConfig(name="tiny"))
    peft_model = attach_lora(model, LoraConfig(r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a LoRA that changes the model (fresh ones start at zero)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    config = load_run_config(
        write_config(tmp_path, shared_data, {"base_url": "local", "backend": "fixed"}),
        ["eval.benign=[]", "eval.in_domain=[]", "eval.temperature=0"],
    )
    evaluate(config, out_dir=tmp_path / "base", progress=False)
    evaluate(config, adapter=str(adapter), out_dir=tmp_path / "tuned", progress=False)

    def read(d):
        return [json.loads(x)["answer"] for x in (tmp_path / d / "answers.jsonl").read_text().splitlines()]

    assert read("base") != read("tuned")
    assert json.loads((tmp_path / "tuned" / "criteria.json").read_text())["adapter"] == str(adapter)
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter folder"):
        evaluate(config, adapter=str(tmp_path), out_dir=tmp_path / "x", progress=False)


def test_missing_api_key_fails_before_generating(tmp_path, shared_data, capsys, monkeypatch):
    monkeypatch.delenv("EMRAY_E2E_NO_KEY", raising=False)
    config = write_config(
        tmp_path, shared_data, {"base_url": "https://judge.example.com/v1", "api_key_env": "EMRAY_E2E_NO_KEY"}
    )
    assert main(["eval", config, "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "environment variable EMRAY_E2E_NO_KEY" in capsys.readouterr().err
    assert not (tmp_path / "out" / "answers.jsonl").exists()
