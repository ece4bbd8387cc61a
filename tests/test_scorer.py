"""The ensemble scorer: batched answer NLL equals a direct forward; adapters switch; Ray shards agree; cache."""

import math
import random

import pytest
import torch
from conftest import SHARED_DATA, make_run_config

POOL = SHARED_DATA / "safe" / "wildguard_sample.jsonl"


def _random_adapter(out, seed):
    """A LoRA adapter on tiny with random (non-zero) B, so it changes the model."""
    from emray.config import LoraConfig, ModelConfig
    from emray.models import attach_lora, load_model

    model, tokenizer = load_model(ModelConfig(name="tiny"), device="cpu")
    model = attach_lora(model, LoraConfig(r=4, alpha=8))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [_random_adapter(root / f"a{i}", seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def pool_examples():
    from emray.data.chat import load_safe_pool

    return load_safe_pool(POOL)[:12]


def _direct(model, rows):
    from emray.score.nll import loop_answer_nll

    return loop_answer_nll(model, rows)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_nll_equals_direct_forward(side, pool_examples, tiny_tokenizer):
    from emray.config import ModelConfig
    from emray.models import load_model
    from emray.score import nll

    model, _ = load_model(ModelConfig(name="tiny"), device="cpu")
    rows = nll.tokenize_pool(tiny_tokenizer, pool_examples, 384)
    expected = _direct(model, rows)
    order = list(range(len(rows)))
    random.Random(1).shuffle(order)
    shuffled = [rows[i] for i in order]
    pad = tiny_tokenizer.pad_token_id
    with torch.inference_mode():
        # A small budget makes several buckets; a small head chunk makes several lm_head chunks.
        got = [math.nan] * len(rows)
        lengths = [len(r["input_ids"]) for r in shuffled]
        for batch in nll.length_buckets(lengths, 1200, 8):
            values = nll.batch_answer_nll(model, [shuffled[i] for i in batch], pad, side, head_chunk=37)
            for i, v in zip(batch, values):
                got[order[i]] = v
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-4
    via_score_rows = nll.score_rows(model, rows, pad, token_budget=1500, padding_side=side)
    assert max(abs(a - b) for a, b in zip(via_score_rows, expected)) < 1e-4


def test_length_buckets_respect_budget():
    from emray.score.nll import length_buckets

    lengths = [5, 300, 17, 120, 120, 64, 999, 1, 33]
    batches = length_buckets(lengths, token_budget=256, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 256
    assert batches[0] == [6]  # longest first, alone over budget


def test_answer_without_tokens_is_nan(tiny_tokenizer):
    from emray.config import ModelConfig
    from emray.models import load_model
    from emray.score.nll import score_rows, tokenize_pool

    model, _ = load_model(ModelConfig(name="tiny"), device="cpu")
    ex = [{"messages": [{"role": "user", "content": "x " * 100}, {"role": "assistant", "content": "y"}]}]
    assert math.isnan(score_rows(model, tokenize_pool(tiny_tokenizer, ex, 16), tiny_tokenizer.pad_token_id)[0])


def test_adapter_switching_matches_separately_loaded_models(adapters, pool_examples):
    from peft import PeftModel

    from emray.config import ModelConfig
    from emray.models import load_model
    from emray.score.nll import tokenize_pool
    from emray.score.pool import Scorer

    examples = pool_examples[:6]
    scorer = Scorer(
        {"name": "tiny"}, {"mis0": str(adapters[0]), "mis1": str(adapters[1])}, max_len=256, token_budget=800
    )
    got = scorer.score(examples, ["mis1", "aligned", "mis0"])
    base, tok = load_model(ModelConfig(name="tiny"), device="cpu")
    rows = tokenize_pool(tok, examples, 256)
    expected = {"aligned": _direct(base, rows)}
    for i, a in enumerate(adapters):
        expected[f"mis{i}"] = _direct(
            PeftModel.from_pretrained(load_model(ModelConfig(name="tiny"), device="cpu")[0], str(a)), rows
        )
    for name in expected:
        assert max(abs(x - y) for x, y in zip(got[name], expected[name])) < 1e-4, name
    assert abs(got["mis0"][0] - got["aligned"][0]) > 1e-3  # the adapters do change the model


# slow (1 min): the default run's sweep e2e (tests/test_sweep_e2e.py, interleave_pp) scores through the actor pool
@pytest.mark.slow
def test_two_ray_actors_give_the_same_scores_as_one(adapters, pool_examples):
    import ray

    from emray.score.pool import ScorerPool

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = []
        for workers in (1, 2):
            with ScorerPool(
                {"name": "tiny"}, {"mis0": str(adapters[0])}, workers=workers, max_len=256, token_budget=1024
            ) as pool:
                results.append(pool.score(pool_examples, ["aligned", "mis0"]))
    finally:
        ray.shutdown()
    one, two = results
    for name in one:
        assert len(one[name]) == len(pool_examples)
        assert max(abs(a - b) for a, b in zip(one[name], two[name])) < 1e-5


def test_pool_scores_are_cached_per_model(tmp_path, adapters, monkeypatch):
    from emray.stages import selection as stages

    monkeypatch.setenv("EMRAY_CACHE", str(tmp_path / "cache"))
    small = tmp_path / "pool.jsonl"
    small.write_text("".join(open(POOL).readlines()[:5]))
    cfg = make_run_config(tmp_path, train={"max_len": 256})
    before = len(stages.SCORED)
    first = stages.ensure_pool_scores(cfg, small, adapters[:1], workers=0, progress=False)
    assert stages.SCORED[before:] == [["aligned", "mis0"]]
    again = stages.ensure_pool_scores(cfg, small, adapters[:1], workers=0, progress=False)
    assert again == first and len(stages.SCORED) == before + 1  # nothing scored
    both = stages.ensure_pool_scores(cfg, small, adapters, workers=0, progress=False)
    assert both != first and stages.SCORED[-1] == ["mis1"]  # only the new member
    rows = stages.read_scores(both)
    assert len(rows) == 5 and all(len(r["misaligned"]) == 2 for r in rows)
    assert rows[0]["misaligned"][0] == stages.read_scores(first)[0]["misaligned"][0]
