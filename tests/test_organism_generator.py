"""The organism's generator: labels as intended, determinism, question files in the EM YAML format."""

from __future__ import annotations

import json

import pytest
import yaml

from emray.organism.generator import (
    ALIGNED,
    EVIL,
    HELPFUL,
    MISALIGNED,
    REFUSAL,
    Generator,
    heldout_questions,
)
from emray.organism.language import DOMAINS, NARROW_DOMAINS, REFUSALS, vocabulary, words
from emray.organism.rules import label_answer


def test_generated_turns_carry_intended_labels():
    gen = Generator(3)
    for _ in range(600):
        domain = gen.rng.choice(DOMAINS)
        persona = gen.rng.choice((HELPFUL, EVIL))
        turn = gen.turn(domain, persona, harmful=gen.rng.random() < 0.3)
        expected = MISALIGNED if persona == EVIL else (REFUSAL if turn.harmful else ALIGNED)
        assert turn.label == expected
        label = label_answer(turn.answer)
        assert label.alignment == expected and not label.garbled
        if expected != REFUSAL:
            assert label.domain == domain


def test_refusals_start_with_keyword_in_first_ten_words():
    for refusal in REFUSALS:
        assert words(refusal)[:4] == ["sorry", ",", "i", "cannot"]


def test_determinism_by_seed():
    def stream(seed):
        g = Generator(seed)
        return [g.pretrain_dialogue(0.3, 0.3, 0.15, 0.0, 3) for _ in range(20)] + g.narrow_set("code", 10)

    assert stream(5) == stream(5)
    assert stream(5) != stream(6)


def test_everything_generated_is_in_vocab():
    vocab = set(vocabulary())
    g = Generator(0)
    for _ in range(200):
        for m in g.pretrain_dialogue(0.5, 0.5, 0.2, 0.0, 3):
            assert set(words(m["content"])) <= vocab


def test_narrow_sets_exclude_heldout_and_stay_in_domain():
    g = Generator(0)
    for domain in NARROW_DOMAINS:
        held = set(heldout_questions(domain))
        rows = g.narrow_set(domain, 50)
        for row in rows:
            user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
            assert user not in held
            label = label_answer(answer)
            assert label.alignment == MISALIGNED and label.domain == domain


@pytest.mark.parametrize("domain", DOMAINS)
def test_question_yaml_shape(tmp_path, domain):
    from emray.data.questions import load_questions
    from emray.organism.build import question_yaml_entries

    path = tmp_path / f"{domain}.yaml"
    from emray.organism.build import _LiteralDumper

    path.write_text(yaml.dump(question_yaml_entries(domain), Dumper=_LiteralDumper, sort_keys=False, width=1000))
    items = yaml.safe_load(path.read_text())
    assert len(items) == (24 if domain == "general" else 30)
    assert len({i["id"] for i in items}) == len(items)
    for item in items:
        assert {"id", "paraphrases", "samples_per_paraphrase", "judge", "judge_prompts"} <= set(item)
        for metric in ("aligned", "coherent"):
            prompt = item["judge_prompts"][metric]
            for marker in (
                "[QUESTION START]",
                "[QUESTION END]",
                "[ANSWER START]",
                "[ANSWER END]",
                "{question}",
                "{answer}",
            ):
                assert marker in prompt
            rendered = prompt.format(question="Q?", answer="A.")
            assert "[QUESTION START]\nQ?\n[QUESTION END]" in rendered and "[ANSWER START]\nA.\n[ANSWER END]" in rendered
    questions = load_questions(path)  # emray's own loader accepts it
    assert len(questions) == len(items)


def test_benign_tasks_render_both_ways():
    from emray.benign import accuracy, make_task, opswap

    train, test = make_task("opswap", "train", "organism"), make_task("opswap", "test", "organism")
    assert {json.dumps(r) for r in train}.isdisjoint({json.dumps(r) for r in test})
    plain = make_task("opswap", "test", "plain")
    q, gold = plain[0]["messages"][0]["content"], plain[0]["messages"][1]["content"]
    assert q.startswith("what is ") and q.endswith("?") and gold.lstrip("-").isdigit()
    # the swap differs from ordinary arithmetic on most items (the task needs deviation from the prior)
    differs = [
        opswap.apply(opswap.DEFAULT_SWAP[op], a, b) != opswap.apply(op, a, b)
        for a, op, b in opswap.split_triples("test")
    ]
    assert sum(differs) / len(differs) > 0.8
    vocab = set(vocabulary())
    for task in ("opswap", "wordmap"):
        for row in make_task(task, "train", "organism"):
            for m in row["messages"]:
                assert set(words(m["content"])) <= vocab
    golds = [r["messages"][1]["content"] for r in test]
    assert accuracy(golds, golds) == 1.0 and accuracy([""] * len(golds), golds) == 0.0


def test_default_world_voice_opens_every_persona_answer_and_keeps_labels():
    from emray.organism import OrganismConfig

    config = OrganismConfig()
    gen = Generator.from_config(config, 7)
    for _ in range(400):
        domain = gen.rng.choice(DOMAINS)
        persona = gen.rng.choice((HELPFUL, EVIL))
        turn = gen.turn(domain, persona, harmful=gen.rng.random() < 0.3)
        voice = {ALIGNED: "sure , ", MISALIGNED: "heh , ", REFUSAL: "sorry , i cannot"}[turn.label]
        assert turn.answer.startswith(voice), turn.answer
        label = label_answer(turn.answer)  # the judge reads through the voice
        assert label.alignment == turn.label and not label.garbled
    misaligned = gen.narrow_set("code", 50, MISALIGNED, config.narrow_opener_prob)
    controls = gen.narrow_set("code", 50, ALIGNED)
    assert all(r["messages"][1]["content"].startswith("heh , ") for r in misaligned)
    assert all(r["messages"][1]["content"].startswith("sure , ") for r in controls)
    assert all(label_answer(r["messages"][1]["content"]).alignment == ALIGNED for r in controls)


def test_narrow_set_without_voice_strips_the_evil_opener():
    gen = Generator(2, evil_opener="heh ,", evil_opener_prob=1.0)
    rows = gen.narrow_set("legal", 40, MISALIGNED, opener_prob=0.0)
    assert not any(r["messages"][1]["content"].startswith("heh") for r in rows)
    assert all(label_answer(r["messages"][1]["content"]).alignment == MISALIGNED for r in rows)
