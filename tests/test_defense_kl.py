"""KL to the reference model: value, both directions, chunking and gradients, against direct computation."""

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA

from emray.config import LoraConfig, ModelConfig
from emray.data.chat import load_chat_jsonl
from emray.data.tokenize import IGNORE_INDEX, tokenize_chat
from emray.defenses import get_defense_class
from emray.defenses.losses import DefenseBatch


def tiny_lora(seed=0):
    from emray.models import attach_lora, load_model

    torch.manual_seed(seed)
    model, tok = load_model(ModelConfig(name="tiny"))
    model = attach_lora(model, LoraConfig(r=4, alpha=8))
    model.train()
    return model, tok


def move_adapter(model, std=0.3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def make_inputs(tok, n=3, max_len=96):
    examples = load_chat_jsonl(SHARED_DATA / "train" / "medical.jsonl", limit=n)
    # Shortened real conversations of different lengths, so the batch has padding.
    rows = [
        tokenize_chat(
            tok, [{"role": m["role"], "content": m["content"][:60]} for m in ex["messages"]], max_len - 12 * i
        )
        for i, ex in enumerate(examples)
    ]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((n, width), tok.pad_token_id)
    labels = torch.full((n, width), IGNORE_INDEX)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):  # right padding, like the trainer's collator
        k = len(r["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    assert all((labels[i] != IGNORE_INDEX).sum() > 3 for i in range(n)) and not mask.all()
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def direct_logps(model, inputs):
    """Full-logit log-probs of policy and reference at answer positions (the slow, obvious way)."""
    sel = inputs["labels"][:, 1:] != IGNORE_INDEX
    kw = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    pol = F.log_softmax(model(**kw).logits[:, :-1][sel].float(), -1)
    with torch.no_grad(), model.disable_adapter():
        ref = F.log_softmax(model(**kw).logits[:, :-1][sel].float(), -1)
    return pol, ref, inputs["labels"][:, 1:][sel]


def lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_lora()
    return model, tok, make_inputs(tok)


def test_kl_zero_at_init_and_grows_when_adapter_moves(setup):
    model, _, inputs = setup
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if "lora_B" in n):
            p.zero_()
    for direction in ("forward", "reverse"):
        assert DefenseBatch(model, inputs).kl_loss(direction).item() == pytest.approx(0.0, abs=1e-7)
    move_adapter(model, std=0.05)
    small = DefenseBatch(model, inputs).kl_loss("forward").item()
    move_adapter(model, std=0.3)
    large = DefenseBatch(model, inputs).kl_loss("forward").item()
    assert 0 < small < large


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_matches_kl_div_over_answer_tokens(setup, direction):
    model, _, inputs = setup
    move_adapter(model)
    pol, ref, targets = direct_logps(model, inputs)
    # F.kl_div(input=log q, target=log p, log_target=True) sums p·(log p − log q) = KL(p ‖ q).
    p, q = (pol, ref) if direction == "forward" else (ref, pol)
    expected = F.kl_div(q, p, log_target=True, reduction="sum") / pol.shape[0]
    batch = DefenseBatch(model, inputs, chunk_tokens=7)
    assert batch.kl_loss(direction).item() == pytest.approx(expected.item(), rel=1e-4)
    assert batch.ce_loss().item() == pytest.approx(F.nll_loss(pol, targets).item(), rel=1e-5)
    other = "reverse" if direction == "forward" else "forward"
    assert batch.kl_loss(other).item() != pytest.approx(expected.item(), rel=1e-3)  # directions differ


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_chunked_gradients_equal_full_logit_gradients(setup, direction):
    model, _, inputs = setup
    move_adapter(model)
    lam = 0.7
    model.zero_grad()
    pol, ref, targets = direct_logps(model, inputs)
    p, q = (pol, ref) if direction == "forward" else (ref, pol)
    (F.nll_loss(pol, targets) + lam * F.kl_div(q, p, log_target=True, reduction="sum") / pol.shape[0]).backward()
    expected = lora_grads(model)
    model.zero_grad()
    batch = DefenseBatch(model, inputs, chunk_tokens=5)
    (batch.ce_loss() + lam * batch.kl_loss(direction)).backward()
    got = lora_grads(model)
    assert set(got) == set(expected) and any("lora_A" in n for n in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_kl_is_chunked_and_reference_has_no_grad(setup):
    model, _, inputs = setup
    move_adapter(model)
    head = model.get_base_model().lm_head
    rows = []
    handle = head.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    try:
        batch = DefenseBatch(model, inputs, chunk_tokens=8)
        batch.kl_loss("forward")
    finally:
        handle.remove()
    # Head runs on ≤ 8 answer tokens at a time (plus the model's own 1-position logits per row).
    assert max(r for r in rows if r != inputs["input_ids"].shape[0]) <= 8
    assert sum(r for r in rows if r <= 8) >= 2 * batch.num_answer_tokens  # policy + reference chunks
    assert not batch.reference_answer_hidden.requires_grad and batch.answer_hidden.requires_grad


def test_trainable_head_falls_back_to_checkpointing_with_same_gradients(setup):
    model, _, inputs = setup
    move_adapter(model)
    head = model.get_base_model().lm_head
    head.weight.requires_grad_(True)
    try:
        model.zero_grad()
        pol, ref, targets = direct_logps(model, inputs)
        (F.nll_loss(pol, targets) + F.kl_div(ref, pol, log_target=True, reduction="sum") / pol.shape[0]).backward()
        expected = head.weight.grad.clone()
        model.zero_grad()
        batch = DefenseBatch(model, inputs, chunk_tokens=6)
        (batch.kl_loss("forward") + batch.ce_loss()).backward()
        torch.testing.assert_close(head.weight.grad, expected, rtol=1e-4, atol=1e-6)
    finally:
        head.weight.requires_grad_(False)
        model.zero_grad()


def test_kl_defense_params_and_weighted_term(setup):
    model, _, inputs = setup
    move_adapter(model)
    cls = get_defense_class("kl")
    defense = cls({"lambda": 0.5, "direction": "reverse"})
    assert defense.params.lam == 0.5 and defense.params.model_dump(by_alias=True)["lambda"] == 0.5
    batch = DefenseBatch(model, inputs)
    terms = defense.loss(batch)
    assert set(terms) == {"kl"}
    assert terms["kl"].item() == pytest.approx(0.5 * batch.kl_loss("reverse").item())
    with pytest.raises(ValueError, match="direction"):
        cls({"lambda": 0.1, "direction": "sideways"})
    assert cls().params.lam == 0.1 and cls().params.direction == "forward"


def reference_kl_divergence_loss(logits_trained, logits_frozen, attention_mask):
    """EMA_RL grpo_regularization/kl_divergence.py (reduction 'batchmean'), written out: KL(model ‖ frozen)
    per position, masked by the attention mask, summed and divided by the mask's sum."""
    lp, lq = F.log_softmax(logits_trained.float(), -1), F.log_softmax(logits_frozen.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1) * attention_mask
    return kl.sum() / attention_mask.sum()


def test_kl_over_the_whole_sequence_matches_the_reference_and_its_gradients(setup):
    """tokens: sequence = the reference's average over every non-padding position (prompt included)."""
    model, _, inputs = setup
    move_adapter(model)
    kw = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    model.zero_grad()
    pol_logits = model(**kw).logits
    with torch.no_grad(), model.disable_adapter():
        ref_logits = model(**kw).logits
    expected = reference_kl_divergence_loss(pol_logits, ref_logits, inputs["attention_mask"])
    expected.backward()
    expected_grads = lora_grads(model)
    model.zero_grad()
    defense = get_defense_class("kl")({"lambda": 2.0, "tokens": "sequence", "chunk_tokens": 5})
    batch = DefenseBatch(model, inputs, chunk_tokens=5)
    term = defense.loss(batch)["kl"]
    assert term.item() == pytest.approx(2.0 * expected.item(), rel=1e-4)
    (term / 2.0).backward()
    got = lora_grads(model)
    assert set(got) == set(expected_grads)
    for name in expected_grads:
        torch.testing.assert_close(got[name], expected_grads[name], rtol=1e-4, atol=1e-6)
    model.zero_grad()
    # Another quantity than the default answer-token mean, and the positions add up to the mask.
    assert batch.kl_loss("forward").item() != pytest.approx(expected.item(), rel=1e-3)
    assert int(batch.other_positions.sum()) + batch.num_answer_tokens == int(inputs["attention_mask"].sum())
    with pytest.raises(ValueError, match="tokens must be"):
        batch.kl_loss("forward", "prompt")
