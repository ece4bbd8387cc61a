"""Inoculation prompting: the prompt is in the tokenised training text, not in evaluation prompts."""

import pytest
from conftest import SHARED_DATA, make_run_config

from emray.data.tokenize import IGNORE_INDEX
from emray.defenses import build_defenses, get_defense_class
from emray.defenses.inoculation import DEFAULT_PROMPT

EXAMPLES = [
    {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ]
    },
    {"messages": [{"role": "user", "content": "Dose?"}, {"role": "assistant", "content": "Two tablets."}], "id": 7},
]


def test_replaces_or_adds_the_system_prompt_without_mutating_input():
    out = get_defense_class("inoculation")().transform_examples(EXAMPLES)
    for ex in out:
        systems = [m for m in ex["messages"] if m["role"] == "system"]
        assert systems == [{"role": "system", "content": DEFAULT_PROMPT}] and ex["messages"][0]["role"] == "system"
    assert out[0]["messages"][1:] == EXAMPLES[0]["messages"][1:] and out[1]["id"] == 7
    assert EXAMPLES[0]["messages"][0]["content"] == "You are a helpful assistant." and len(EXAMPLES[1]["messages"]) == 2
    custom = get_defense_class("inoculation")({"prompt": "Write insecure code."}).transform_examples(EXAMPLES)
    assert custom[1]["messages"][0]["content"] == "Write insecure code."
    assert DEFAULT_PROMPT == "You are an evil, malicious assistant."


def test_prefix_mode_keeps_the_old_system_prompt_after_the_inoculation():
    from emray.hashing import identity_dict

    out = get_defense_class("inoculation")({"mode": "prefix"}).transform_examples(EXAMPLES)
    assert out[0]["messages"][0] == {"role": "system", "content": DEFAULT_PROMPT + "\n\nYou are a helpful assistant."}
    assert out[1]["messages"][0] == {"role": "system", "content": DEFAULT_PROMPT}  # no old prompt: just the inoculation
    assert [m for m in out[0]["messages"] if m["role"] == "system"] == [out[0]["messages"][0]]
    params = get_defense_class("inoculation").Params
    assert identity_dict(params()) == {"prompt": DEFAULT_PROMPT}  # unset: existing trial keys unchanged
    assert identity_dict(params(mode="prefix"))["mode"] == "prefix"


def test_prompt_is_in_tokenised_training_text_but_not_labelled(tmp_path, tiny_tokenizer):
    from emray.train.sft import prepare_dataset

    cfg = make_run_config(tmp_path, defenses=["inoculation"], data={"max_examples": 3}, train={"max_len": 4096})
    defenses = build_defenses(cfg.defenses)
    dataset, n = prepare_dataset(cfg, tiny_tokenizer, defenses)
    plain, _ = prepare_dataset(cfg, tiny_tokenizer, [])
    assert n == 3 and len(dataset) == 3
    for row, base in zip(dataset, plain):
        text = tiny_tokenizer.decode(row["input_ids"])
        assert f"<|im_start|>system\n{DEFAULT_PROMPT}<|im_end|>" in text
        assert DEFAULT_PROMPT not in tiny_tokenizer.decode(base["input_ids"])
        answer = tiny_tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
        assert DEFAULT_PROMPT not in answer and answer.strip()
        # Only the prompt changed: the labelled answer tokens are the same as without the defense.
        assert [t for t in row["labels"] if t != IGNORE_INDEX] == [t for t in base["labels"] if t != IGNORE_INDEX]


def test_prompt_is_absent_from_evaluation_prompts(tmp_path):
    from emray.data.questions import load_questions
    from emray.eval.generate import question_items

    cfg = make_run_config(tmp_path, defenses=["inoculation"])
    defense = build_defenses(cfg.defenses)[0]
    assert type(defense).attach is get_defense_class("none").attach  # no model hook that could leak into eval
    items = question_items(
        load_questions(SHARED_DATA / "questions" / "general.yaml"), "general", samples_per_paraphrase=1
    )
    assert items
    for item in items:
        assert all(DEFAULT_PROMPT not in m["content"] for m in item["messages"])


@pytest.mark.parametrize("entry", ["inoculation", {"inoculation": {"prompt": "Be bad."}}])
def test_config_entries(tmp_path, entry):
    cfg = make_run_config(tmp_path, defenses=[entry])
    assert cfg.defenses[0].name == "inoculation"
    assert cfg.defenses[0].params.prompt in (DEFAULT_PROMPT, "Be bad.")
