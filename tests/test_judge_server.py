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
    return client.chat.completions.create(
        model="gpt-4o-mini-2024-07-18",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=1,
        logprobs=True,
        top_logprobs=top,
        temperature=0,
        seed=0,
    )


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
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Rate this answer from 0 to 100."}], tokenize=False, add_generation_prompt=True
    )
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


# -- malformed requests, bearer token, host and port ---------------------------------------------------


def post(url: str, body: bytes | str, token: str | None = None, path: str = "/chat/completions") -> tuple[int, dict]:
    """A raw POST (no client-side checks): (status, the JSON body)."""
    import json
    import urllib.error
    import urllib.request

    data = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


GOOD = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 5}'


@pytest.mark.parametrize(
    "body, reason",
    [
        ("not json {", "the body is not JSON"),
        (b"\xff\xfe{", "the body is not JSON"),
        ("[1, 2]", "the body must be a JSON object, got list"),
        ('{"model": "m"}', "messages: missing"),
        ('{"messages": [1, 2]}', "messages[0] must be an object with role and content, got int 1"),
        ('{"messages": [{"content": "x"}]}', "messages[0].role must be a string"),
        (
            '{"messages": [{"role": "user", "content": 5}]}',
            "messages[0].content must be a string or a list of text parts",
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
            "messages[0].content[0] must be a text part",
        ),
        ('{"messages": [{"role": "user", "content": "x"}], "model": 3}', "model must be a string"),
        (
            '{"messages": [{"role": "user", "content": "x"}], "top_logprobs": "abc"}',
            "top_logprobs must be an integer between 0 and 20, got 'abc'",
        ),
        ('{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2.5}', "top_logprobs must be an integer"),
        ('{"messages": [{"role": "user", "content": "x"}], "logprobs": "yes"}', "logprobs must be true or false"),
        (
            '{"messages": [{"role": "user", "content": "x"}], "response_format": "json"}',
            "response_format must be an object",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}',
            "response_format.type must be",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": "x"}}',
            "response_format.json_schema must be an object, got str",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"schema": [1]}}}',
            "response_format.json_schema.schema must be an object, got list",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", '
            '"json_schema": {"schema": {"properties": [1]}}}}',
            "json_schema.schema.properties must be an object",
        ),
    ],
)
def test_every_malformed_request_gets_400_with_the_reason(body, reason):
    with start_judge_server("rules") as server:
        status, reply = post(server.url, body)
        assert status == 400, reply
        assert reason in reply["error"]["message"]
        assert post(server.url, GOOD)[0] == 200  # the server still answers
        assert server.counts["bad_request"] == 1 and "backend_error" not in server.counts


def test_list_content_parts_are_read_as_text():
    with start_judge_server("fixed", {"score": 9}) as server:
        body = '{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}], "logprobs": true}'
        status, reply = post(server.url, body)
    assert status == 200 and reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["token"] == "9"


def test_bearer_token_is_required_when_set(monkeypatch, tmp_path):
    from emray.config.eval import JudgeConfig
    from emray.eval.judge import JudgeClient, JudgeError, JudgeRequest

    with start_judge_server("fixed", {"score": 42}, token="s3cret") as server:
        status, reply = post(server.url, GOOD)
        assert status == 401 and "missing bearer token" in reply["error"]["message"]
        status, reply = post(server.url, GOOD, token="wrong")
        assert status == 401 and "wrong bearer token" in reply["error"]["message"]
        assert post(server.url, GOOD, token="s3cret")[0] == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
        assert [m.id for m in openai.OpenAI(base_url=server.url, api_key="s3cret").models.list().data] == [
            "emray-fixed"
        ]
        # the judge client sends $EMRAY_JUDGE_TOKEN (before any OpenAI key, on this machine)
        cfg = JudgeConfig(base_url=server.url, cache=False, max_retries=0)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-local")
        monkeypatch.delenv("EMRAY_JUDGE_TOKEN", raising=False)
        with pytest.raises(JudgeError, match="401.*bearer token"):
            JudgeClient(cfg).judge_many([JudgeRequest("x")])
        monkeypatch.setenv("EMRAY_JUDGE_TOKEN", "s3cret")
        [result] = JudgeClient(cfg).judge_many([JudgeRequest("x")])
        assert result.top_logprobs[0][0] == "42"
        assert server.counts["unauthorized"] == 4


def test_a_non_loopback_host_needs_a_token(monkeypatch, capsys):
    from emray.cli import main
    from emray.judge_server import JudgeServer
    from emray.judge_server.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="needs a bearer token"):
        JudgeServer(create_backend("fixed"), "0.0.0.0")
    monkeypatch.delenv("EMRAY_JUDGE_TOKEN", raising=False)
    assert main(["judge-server", "--backend", "fixed", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0: listening beyond this machine needs a bearer token" in err and "EMRAY_JUDGE_TOKEN" in err
    server = JudgeServer(create_backend("fixed"), "0.0.0.0", token="t")  # with a token it binds
    server._sock.close()


def test_token_file_errors_name_the_file(tmp_path, capsys):
    from emray.cli import main

    for path, why in [
        (tmp_path / "nope", "no such file"),
        (tmp_path, "is a directory"),
        (tmp_path / "empty", "the file is empty"),
    ]:
        if path.name == "empty":
            path.write_text("\n")
        assert main(["judge-server", "--token-file", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"--token-file {path}: {why}" in err and "Traceback" not in err


def test_a_busy_port_is_one_line(capsys):
    import socket

    from emray.cli import main

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        assert main(["judge-server", "--backend", "fixed", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"emray judge-server: error: cannot listen on 127.0.0.1:{port}: the port is already in use "
        "(another judge server?); pick another --port or 0 for a free one"
    )


def test_cli_subprocess_with_a_token_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("from-file\n")
    with start_judge_server_process("fixed", {"score": 3}, extra_args=["--token-file", str(token)]) as proc:
        assert post(proc.url, GOOD)[0] == 401
        status, reply = post(proc.url, GOOD, token="from-file")
        assert status == 200 and reply["choices"][0]["message"]["content"] == "3"
