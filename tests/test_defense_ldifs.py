"""LDIFS: the configured layers, the normalisation, and gradients into the LoRA weights."""

import pytest
import torch

from emray.defenses import get_defense_class
from emray.defenses.ldifs import evenly_spaced_layers
from emray.train.losses import DefenseBatch
from test_defense_kl import make_inputs, move_adapter, tiny_lora


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_lora()
    return model, tok, make_inputs(tok)


def direct_ldifs(model, inputs, layers, mask):
    kw = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True)
    pol = model(**kw).hidden_states
    with torch.no_grad(), model.disable_adapter():
        ref = model(**kw).hidden_states
    phi = torch.cat([pol[i][mask] for i in layers], dim=-1)  # concatenated features, [tokens, k·d]
    phi_ref = torch.cat([ref[i][mask] for i in layers], dim=-1)
    return ((phi - phi_ref) ** 2).sum(-1).mean() / phi.shape[-1]


def test_evenly_spaced_layers():
    assert evenly_spaced_layers(28, 5) == [6, 11, 17, 22, 28]
    assert evenly_spaced_layers(24, 5) == [5, 10, 14, 19, 24]
    assert evenly_spaced_layers(4, 5) == [1, 2, 3, 4]
    assert evenly_spaced_layers(4, 2) == [2, 4]


@pytest.mark.parametrize("num_layers,tokens", [(2, "all"), (5, "all"), (2, "answer")])
def test_ldifs_matches_direct_computation_on_configured_layers(setup, num_layers, tokens):
    model, _, inputs = setup
    move_adapter(model)
    defense = get_defense_class("ldifs")({"lambda": 2.0, "num_layers": num_layers, "tokens": tokens})
    layers = defense.hidden_layers(model)
    assert layers == evenly_spaced_layers(4, num_layers)
    batch = DefenseBatch(model, inputs, hidden_layers=layers)
    mask = batch.token_mask if tokens == "all" else batch.answer_token_mask
    value = defense.loss(batch)["ldifs"].item()
    assert value == pytest.approx(2.0 * direct_ldifs(model, inputs, layers, mask).item(), rel=1e-5)
    # The hidden states used are the configured ones: another layer set gives another value.
    other = [1] if layers != [1] else [2]
    assert value != pytest.approx(2.0 * direct_ldifs(model, inputs, other, mask).item(), rel=1e-3)
    # Padding never counts (right-padded rows in this batch).
    assert not batch.token_mask.all() and (batch.token_mask.sum() > batch.answer_token_mask.sum())


def test_ldifs_zero_at_init_and_gradient_reaches_lora(setup):
    model, _, inputs = setup
    defense = get_defense_class("ldifs")()
    assert defense.params.lam == 1.0 and defense.params.num_layers == 5
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if "lora_B" in n):
            p.zero_()
    batch = DefenseBatch(model, inputs, hidden_layers=defense.hidden_layers(model))
    assert defense.loss(batch)["ldifs"].item() == 0.0
    move_adapter(model)
    model.zero_grad()
    batch = DefenseBatch(model, inputs, hidden_layers=defense.hidden_layers(model))
    loss = defense.loss(batch)["ldifs"]
    assert loss.item() > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("lora_A" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert any("lora_B" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert all("lora_" in n for n in grads)  # base weights stay frozen
    # A small step along the gradient lowers the feature distance.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad
    after = defense.loss(DefenseBatch(model, inputs, hidden_layers=defense.hidden_layers(model)))["ldifs"].item()
    assert after < loss.item()
    model.zero_grad()
