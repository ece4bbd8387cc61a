"""Answer generation: items per paraphrase and sample, seeded batches, left padding, chat template."""

from __future__ import annotations

import pytest

from emray.data.questions import Question
from emray.eval.generate import HFGenerator, batch_seed, question_items, split_reasoning


@pytest.fixture(scope="module")
def tiny():
    from emray.config import ModelConfig
    from emray.models import load_model

    return load_model(ModelConfig(name="tiny"))


QUESTIONS = [
    Question(id="a", paraphrases=["Hi?", "Hello there, how are you doing today?"], samples_per_paraphrase=3),
    Question(id="b", paraphrases=["Say something."], samples_per_paraphrase=2, system="Answer in JSON."),
]


def test_items_cover_every_paraphrase_and_sample():
    items = question_items(QUESTIONS, "general")
    assert len(items) == 2 * 3 + 1 * 2  # the file's own samples_per_paraphrase
    assert [(i["question_id"], i["paraphrase_index"], i["sample_index"]) for i in items[:4]] == [
        ("a", 0, 0),
        ("a", 0, 1),
        ("a", 0, 2),
        ("a", 1, 0),
    ]
    assert items[-1]["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Say something."},
    ]
    assert len(question_items(QUESTIONS, "g", samples_per_paraphrase=5)) == 15
    assert {i["question_id"] for i in question_items(QUESTIONS, "g", max_questions=1)} == {"a"}


def test_split_reasoning():
    assert split_reasoning("<think>\nplan it\n</think>\n\nThe answer.") == ("plan it", "The answer.")
    assert split_reasoning("  plain answer ") == ("", "plain answer")


def test_batch_seeds_differ_by_label_and_batch():
    assert batch_seed(0, "general", 0) == batch_seed(0, "general", 0)
    assert (
        len(
            {
                batch_seed(0, "general", 0),
                batch_seed(0, "general", 1),
                batch_seed(1, "general", 0),
                batch_seed(0, "in_domain/code", 0),
            }
        )
        == 4
    )


def convs(n):
    return [i["messages"] for i in question_items(QUESTIONS, "g")][:n]


def test_sampling_reproduces_with_the_seed(tiny):
    gen = HFGenerator(*tiny)
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=1.0, batch_size=4)
    first = gen.generate(convs(8), seed=3, **kw)
    assert gen.generate(convs(8), seed=3, **kw) == first
    assert gen.generate(convs(8), seed=4, **kw) != first
    assert len(set(first[:3])) > 1  # three samples of one paraphrase are not copies


def test_left_padded_batch_matches_one_by_one(tiny):
    gen = HFGenerator(*tiny)
    conversations = [
        [{"role": "user", "content": "Hi?"}],
        [{"role": "user", "content": "Hello there, how are you doing today? Tell me more."}],
    ]
    batched = gen.generate(conversations, max_new_tokens=10, temperature=0.0, batch_size=2)
    single = [gen.generate([c], max_new_tokens=10, temperature=0.0, batch_size=1)[0] for c in conversations]
    assert batched == single
    assert gen.tokenizer.padding_side == tiny[1].padding_side


def test_chat_template_with_system_prompt_reaches_the_model(tiny):
    model, tok = tiny
    seen = []

    class Recorder:
        device = model.device

        def eval(self):
            return self

        def generate(self, input_ids, attention_mask, **kw):
            seen.append(tok.decode(input_ids[0]))
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)

    HFGenerator(Recorder(), tok).generate(convs(8)[-1:], max_new_tokens=2, temperature=0.0)
    assert seen[0].endswith(
        "<|im_start|>system\nAnswer in JSON.<|im_end|>\n<|im_start|>user\nSay something.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_min_p_reaches_generate_and_the_eval_system_prompt_replaces_the_questions(tiny):
    from emray.data.questions import Question
    from emray.eval.generate import question_items

    model, tok = tiny
    seen = []

    class Recorder:
        device = model.device

        def eval(self):
            return self

        def generate(self, input_ids, attention_mask, **kw):
            seen.append(kw)
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)

    gen = HFGenerator(Recorder(), tok)
    gen.generate(convs(1), max_new_tokens=2, temperature=1.0, top_p=0.9, min_p=0.1)
    gen.generate(convs(1), max_new_tokens=2, temperature=1.0)
    assert (seen[0]["min_p"], seen[0]["top_p"]) == (0.1, 0.9) and "min_p" not in seen[1]

    q = Question(id="q", paraphrases=["Hi?"], system="Answer in JSON.", judge_prompts={})
    own = question_items([q], "general")[0]["messages"]
    ref = question_items([q], "general", system_prompt="You are given a problem.")[0]["messages"]
    assert own[0] == {"role": "system", "content": "Answer in JSON."}
    assert ref == [{"role": "system", "content": "You are given a problem."}, {"role": "user", "content": "Hi?"}]
