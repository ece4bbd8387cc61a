"""LDIFS: the configured layers, the normalisation, and gradients into the LoRA weights."""

import pytest
import torch
from test_defense_kl import make_inputs, move_adapter, tiny_lora

from emray.defenses import get_defense_class
from emray.defenses.ldifs import evenly_spaced_layers
from emray.defenses.losses import DefenseBatch


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
        for _n, p in model.named_parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad
    after = defense.loss(DefenseBatch(model, inputs, hidden_layers=defense.hidden_layers(model)))["ldifs"].item()
    assert after < loss.item()
    model.zero_grad()


def test_reference_layers_follow_linspace_and_keep_duplicates():
    from emray.defenses.ldifs import reference_layers

    # featextract.py: torch.linspace(0, L-1, 5).long() over blocks; block b is hidden_states[b + 1].
    assert reference_layers(28, 5) == [1, 7, 14, 21, 28]
    assert reference_layers(4, 5) == [1, 1, 2, 3, 4]
    assert reference_layers(2, 5) == [1, 1, 1, 1, 2]  # the organism: block 0 four times


def reference_style_distance(model, inputs, blocks, mask):
    """The reference's algorithm, literally: one sequence at a time (its own tokens only), a forward
    hook on each chosen block, each block's [tokens, d] output flattened and L2-normalised, the
    layers concatenated, ||phi_policy - phi_ref||^2, mean over sequences."""
    layers = model.get_base_model().model.layers

    def concat_features(ids, keep):
        grabbed = {}
        handles = [
            layers[b].register_forward_hook(
                lambda m, a, o, b=b: grabbed.__setitem__(b, o[0] if isinstance(o, tuple) else o)
            )
            for b in set(blocks)
        ]
        try:
            model(input_ids=ids)
        finally:
            for h in handles:
                h.remove()
        return torch.cat([torch.nn.functional.normalize(grabbed[b][0][keep].flatten(), dim=0) for b in blocks])

    out = []
    for i in range(inputs["input_ids"].shape[0]):
        n = int(inputs["attention_mask"][i].sum())
        ids, keep = inputs["input_ids"][i : i + 1, :n], mask[i, :n]
        pol = concat_features(ids, keep)
        with torch.no_grad(), model.disable_adapter():
            ref = concat_features(ids, keep)
        out.append(((pol - ref) ** 2).sum())
    return torch.stack(out).mean()


@pytest.mark.parametrize("tokens", ["all", "answer"])
def test_normalized_reference_ldifs_matches_the_reference_algorithm(setup, tokens):
    """features: normalized + layers: reference = the reference's D on blocks 0,0,1,2 (tiny, L=4), with
    the repeated block counted twice. The last block (3) is left out of the hand computation: the
    reference hooks its raw output, emray reads the final-normed hidden_states[4] (documented)."""
    model, _, inputs = setup
    move_adapter(model)
    defense = get_defense_class("ldifs")(
        {"lambda": 3.0, "num_layers": 4, "tokens": tokens, "layers": "reference", "features": "normalized"}
    )
    assert defense.feature_layers(model) == [1, 2, 3, 4]  # linspace(0, 3, 4) = blocks 0, 1, 2, 3
    defense_dup = get_defense_class("ldifs")(
        {"lambda": 3.0, "num_layers": 5, "tokens": tokens, "layers": "reference", "features": "normalized"}
    )
    assert defense_dup.feature_layers(model) == [1, 1, 2, 3, 4]
    batch = DefenseBatch(model, inputs, hidden_layers=defense_dup.hidden_layers(model))
    mask = batch.token_mask if tokens == "all" else batch.answer_token_mask
    # Without the last layer: exactly the reference's algorithm (hooks on raw block outputs).
    defense_dup.feature_layers = lambda m: [1, 1, 2, 3]
    value = defense_dup.loss(batch)["ldifs"].item()
    expected = 3.0 * reference_style_distance(model, inputs, [0, 0, 1, 2], mask).item()
    assert value == pytest.approx(expected, rel=1e-4)
    # Each layer's term is 2 - 2 cos in [0, 4]: the duplicated block really counts twice.
    single = get_defense_class("ldifs")(
        {"lambda": 3.0, "layers": "reference", "features": "normalized", "tokens": tokens}
    )
    single.feature_layers = lambda m: [1]
    d1 = single.loss(batch)["ldifs"].item()
    assert 0 < d1 < 3.0 * 4
    assert value == pytest.approx(d1 + 3.0 * reference_style_distance(model, inputs, [0, 1, 2], mask).item(), rel=1e-4)
    # The default (per-coordinate MSE) is another quantity on the same batch.
    mse = get_defense_class("ldifs")({"lambda": 3.0, "num_layers": 5, "tokens": tokens, "layers": "reference"})
    mse.feature_layers = lambda m: [1, 1, 2, 3]
    assert mse.loss(batch)["ldifs"].item() != pytest.approx(value, rel=1e-2)


def test_normalized_ldifs_zero_at_init_and_gradient_reaches_lora():
    model, tok = tiny_lora(seed=5)  # fresh adapter: B = 0
    inputs = make_inputs(tok)
    defense = get_defense_class("ldifs")({"features": "normalized", "layers": "reference"})
    batch = DefenseBatch(model, inputs, hidden_layers=defense.hidden_layers(model))
    assert defense.loss(batch)["ldifs"].item() == pytest.approx(0.0, abs=1e-6)
    move_adapter(model)
    model.zero_grad()
    loss = defense.loss(DefenseBatch(model, inputs, hidden_layers=defense.hidden_layers(model)))["ldifs"]
    loss.backward()
    assert loss.item() > 0
    assert any("lora_B" in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters())
