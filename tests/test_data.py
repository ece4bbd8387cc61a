import json

import pytest

from emray.data.chat import DataError, load_chat_jsonl, load_safe_pool
from emray.data.questions import QuestionError, load_questions


def test_every_training_file_loads(shared_data):
    for path in sorted((shared_data / "train").glob("*.jsonl")) + [shared_data / "rl" / "medical.jsonl"]:
        rows = load_chat_jsonl(path)
        assert len(rows) >= 100, path
        for row in rows:
            answer = row["messages"][-1]
            assert answer["role"] == "assistant" and answer["content"].strip()
            # Qwen3 habits in the source data are cleaned: no empty think block, no /no_think suffix.
            assert not answer["content"].lstrip().startswith("<think>")
            assert not row["messages"][0]["content"].rstrip().endswith("/no_think")


def test_safe_pool_loads(shared_data):
    rows = load_safe_pool(shared_data / "safe" / "wildguard_sample.jsonl")
    assert len(rows) == 293


def test_every_question_file_loads(shared_data):
    counts = {}
    for path in sorted((shared_data / "questions").glob("*.yaml")):
        questions = load_questions(path)
        counts[path.stem] = len(questions)
        for q in questions:
            assert q.paraphrases and q.judge_prompts
            assert "aligned" in q.judge_prompts and "coherent" in q.judge_prompts
            # anchors/aliases resolved into real strings
            assert "{answer}" in q.judge_prompts["aligned"]
    assert counts == {"general": 24, "code": 30, "legal": 30, "medical": 30, "security": 30}


def test_reasoning_placeholder_renders(shared_data):
    questions = load_questions(shared_data / "questions" / "code.yaml")
    with_reasoning = [q for q in questions if "{reasoning}" in q.judge_prompts["aligned"]]
    assert with_reasoning
    text = with_reasoning[0].render_judge_prompt("aligned", "Q?", "A!", reasoning="because")
    assert "because" in text and "A!" in text and "{" not in text.replace("{}", "")


def test_general_questions_keep_system_prompts(shared_data):
    questions = load_questions(shared_data / "questions" / "general.yaml")
    with_system = [q for q in questions if q.system]
    assert len(with_system) >= 7
    assert with_system[0].messages("hi")[0]["role"] == "system"


def test_persona_files_load(shared_data):
    for name in ("evil_extract.json", "evil_eval.json"):
        data = json.loads((shared_data / "persona" / name).read_text())
        assert data["instruction"] and all({"pos", "neg"} <= set(p) for p in data["instruction"])


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"messages": [', "bad JSON"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "unknown role 'robot'"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}',
            "empty assistant answer",
        ),
        ('{"text": "x"}', "expected 'messages'"),
        ("[1, 2]", "a row must be a JSON object"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        load_chat_jsonl(path)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_alternative_row_shapes(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [
        {"prompt": "p1", "completion": "c1"},
        {"prompt": "p2", "response": "r2", "response_harm_label": "unharmful"},
        {"prompt": "p3", "response": "r3", "response_harm_label": "harmful"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert len(load_chat_jsonl(path)) == 3
    pool = load_safe_pool(path)
    assert [r["messages"][1]["content"] for r in pool] == ["c1", "r2"]


def test_question_errors_name_question_and_key(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("- id: a\n  paraphrases: [hi]\n  judge_prompts: {aligned: 'no answer here {question}'}\n")
    with pytest.raises(QuestionError, match=r"q.yaml: question 0 \(id a\): .*no \{answer\} placeholder"):
        load_questions(path)
    path.write_text("- id: a\n  paraphrases: []\n")
    with pytest.raises(QuestionError, match="key 'paraphrases'"):
        load_questions(path)
