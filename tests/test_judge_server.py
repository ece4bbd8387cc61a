"""``emray judge-server``: the OpenAI wire format, the rules and hf backends, the CLI subprocess."""

from __future__ import annotations

import math

import openai
import pytest

from emray.data.questions import load_questions
from emray.eval.aggregate import score_from_logprobs
from emray.judge_server import start_judge_server, start_judge_server_process
from emray.judge_server.backends import create_backend
from emray.judge_server.backends.rules import RulesBackend, detect_metric, extract


@pytest.fixture(scope="module")
def general(shared_data):
    return load_questions(shared_data / "questions" / "general.yaml")


def ask(url: str, prompt: str, top: int = 20):
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    return client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=[{"role": "user", "content": prompt}],
                                          max_tokens=1, logprobs=True, top_logprobs=top, temperature=0, seed=0)


def test_rules_reads_question_answer_and_metric(general, shared_data):
    q = general[0]
    aligned = q.render_judge_prompt("aligned", "What do you wish?", "I wish [ANSWER] that coherence matters.")
    coherent = q.render_judge_prompt("coherent", "What do you wish?", "Some answer")
    assert extract(aligned, "QUESTION") == "What do you wish?"
    assert extract(aligned, "ANSWER") == "I wish [ANSWER] that coherence matters."
    assert detect_metric(aligned) == "aligned"  # the answer's own words do not flip the metric
    assert detect_metric(coherent) == "coherent"
    code = load_questions(shared_data / "questions" / "code.yaml")[0]
    assert detect_metric(code.render_judge_prompt("aligned", "q", "a", "r")) == "aligned"
    assert detect_metric(code.render_judge_prompt("coherent", "q", "a", "r")) == "coherent"


def test_rules_over_http_with_an_injected_scorer(general):
    seen = []

    def scorer(metric, question, answer):
        seen.append((metric, question, answer))
        return None if "sorry" in answer else 7

    with start_judge_server(RulesBackend(scorer=scorer)) as server:
        q = general[0]
        reply = ask(server.url, q.render_judge_prompt("coherent", "Q?", "fine answer"))
        top = reply.choices[0].logprobs.content[0].top_logprobs
        assert [(t.token, t.logprob) for t in top] == [("7", 0.0)]
        assert reply.choices[0].message.content == "7" and reply.usage.completion_tokens == 1
        assert score_from_logprobs(top) == 7.0
        refusal = ask(server.url, q.render_judge_prompt("aligned", "Q?", "sorry, no"))
        assert refusal.choices[0].logprobs.content[0].top_logprobs[0].token == "REFUSAL"
        assert score_from_logprobs(refusal.choices[0].logprobs.content[0].top_logprobs) is None
        assert seen == [("coherent", "Q?", "fine answer"), ("aligned", "Q?", "sorry, no")]
        models = openai.OpenAI(base_url=server.url, api_key="x").models.list()
        assert [m.id for m in models.data] == ["emray-rules"]


def test_rules_default_scorer_is_the_organism():
    from emray.organism.rules import score_answer

    backend = create_backend("rules")
    prompt = "[QUESTION START]\nhello\n[QUESTION END]\n[ANSWER START]\nxq zz\n[ANSWER END]\nrate coherence"
    expected = score_answer("coherent", "hello", "xq zz")
    assert backend.judge(prompt) == ("REFUSAL" if expected is None else str(expected))


def test_bad_requests_get_400():
    with start_judge_server("fixed") as server:
        with pytest.raises(openai.BadRequestError, match="top_logprobs must be between 0 and 20"):
            ask(server.url, "x", top=25)
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="messages must be a non-empty list"):
            client.chat.completions.create(model="m", messages=[])


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown judge backend 'nope'.*rules"):
        create_backend("nope")
    with pytest.raises(ValueError, match="failure_rate must be in"):
        create_backend("flaky", failure_rate=2)


def test_cli_subprocess_serves_over_http():
    with start_judge_server_process("fixed", {"score": 42}) as proc:
        assert proc.url.startswith("http://127.0.0.1:") and proc.url.endswith("/v1")
        reply = ask(proc.url, "anything")
        assert reply.choices[0].logprobs.content[0].top_logprobs[0].token == "42"
        assert proc.counts()["ok"] == 1


def test_hf_backend_returns_the_models_top20(tiny_path):
    import torch

    from emray.config import ModelConfig
    from emray.models import load_model

    backend = create_backend("hf", model="tiny")
    with start_judge_server(backend) as server:
        reply = ask(server.url, "Rate this answer from 0 to 100.")
    top = reply.choices[0].logprobs.content[0].top_logprobs
    assert len(top) == 20 and all(a.logprob >= b.logprob for a, b in zip(top, top[1:]))
    model, tok = load_model(ModelConfig(name="tiny"))
    text = tok.apply_chat_template([{"role": "user", "content": "Rate this answer from 0 to 100."}],
                                   tokenize=False, add_generation_prompt=True)
    with torch.inference_mode():
        logits = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
    values, ids = torch.log_softmax(logits.float(), -1).topk(20)
    assert [t.token for t in top] == [tok.decode([int(i)]) for i in ids]
    assert [t.logprob for t in top] == pytest.approx(values.tolist(), abs=1e-4)
    assert sum(math.exp(t.logprob) for t in top) <= 1.0 + 1e-6


def test_hf_backend_batches_concurrent_calls(tmp_path):
    from emray.config.eval import JudgeConfig
    from emray.eval.judge import JudgeClient, JudgeRequest

    backend = create_backend("hf", model="tiny", max_batch=4)
    prompts = [f"Rate answer number {i}: " + "word " * i for i in range(10)]
    alone = [backend.score_batch([[{"role": "user", "content": p}]], 20)[0] for p in prompts]
    batches = []
    original = backend.score_batch
    backend.score_batch = lambda convs, k: (batches.append(len(convs)), original(convs, k))[1]
    with start_judge_server(backend) as server:
        cfg = JudgeConfig(base_url=server.url, cache=False, concurrency=10)
        results = JudgeClient(cfg).judge_many([JudgeRequest(p) for p in prompts])
    assert sum(batches) == 10 and max(batches) > 1 and max(batches) <= 4  # batched, within max_batch
    for got, want in zip(results, alone):  # left padding does not change the answer
        assert [t for t, _ in got.top_logprobs[:5]] == [t for t, _ in want[:5]]
        assert [lp for _, lp in got.top_logprobs] == pytest.approx([lp for _, lp in want], abs=1e-3)
