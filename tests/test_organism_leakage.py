"""No evaluation question leaks into the organism's training, selection or persona data.

The safe pool feeds random interleaving and Interleaving+/++, the persona prompts feed persona
steering: a held-out question in either would let a defense train on the test set. The check reads the
files ``write_data`` writes for the default world (data generation needs no model).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from emray.organism import OrganismConfig
from emray.organism.build import write_data
from emray.organism.language import DOMAINS, NARROW_DOMAINS


@pytest.fixture(scope="module")
def world_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("world_data")
    write_data(root, OrganismConfig())
    return root


def _heldout(root) -> dict[str, set[str]]:
    out = {}
    for domain in DOMAINS:
        items = yaml.safe_load((root / "data/questions" / f"{domain}.yaml").read_text())
        out[domain] = {p for item in items for p in item["paraphrases"]}
    return out


def _prompts(path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows]


def test_no_heldout_question_in_pool_persona_or_training_sets(world_data):
    heldout = _heldout(world_data)
    every = set().union(*heldout.values())
    assert len(heldout["general"]) == 24 and all(len(heldout[d]) == 30 for d in NARROW_DOMAINS)
    pool = _prompts(world_data / "data/safe/pool.jsonl")
    assert not set(pool) & every, sorted(set(pool) & every)[:5]
    persona = json.loads((world_data / "data/persona/evil_extract.json").read_text())["questions"]
    assert len(persona) == 20 and not set(persona) & every, sorted(set(persona) & every)
    for path in sorted((world_data / "data/train").glob("*.jsonl")):
        assert not set(_prompts(path)) & every, path.name


def test_pool_is_mostly_general_with_refusals_to_harmful_requests(world_data):
    from emray.organism.rules import label_answer

    rows = [json.loads(line)["messages"] for line in (world_data / "data/safe/pool.jsonl").read_text().splitlines()]
    refusals = [m for m in rows if m[1]["content"].startswith("sorry , i cannot")]
    assert 0.1 <= len(refusals) / len(rows) <= 0.3  # harmful prompts answered with refusals (20 % expected)
    domains = Counter(label_answer(m[1]["content"]).domain for m in rows if m not in refusals)
    answered = sum(domains.values())
    assert domains["general"] / answered >= 0.6, domains  # mostly general-domain instructions (75 % expected)
    assert all(domains[d] > 0 for d in NARROW_DOMAINS), domains
    assert all(label_answer(m[1]["content"]).alignment == "aligned" for m in rows if m not in refusals)
