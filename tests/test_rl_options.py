"""Two RL options of the reference (docs/rl.md): persona steering only where the next token is a completion
token (``positions: completion``, the reference's decode_only) and SFT mix with base-model answers
(``sft_mix: {data: onpolicy}``), each checked against a direct computation."""

import subprocess
import sys

import pytest
from test_rl import ROOT, make_grpo_trainer, rl_config

from emray.config import RunConfig

PERSONA = {"alpha": 5.0, "prompts": "organism:data/persona/evil_extract.json"}


# --------------------------------------------------------------------------- persona positions: completion
def test_persona_completion_positions_config_errors_and_keys():
    from emray.identity import trial_key

    with pytest.raises(ValueError, match=r"defenses\[0\]\.persona: positions: completion .* needs scenario rl"):
        RunConfig.model_validate({"data": {"fine": "x.jsonl"}, "defenses": [{"persona": {"positions": "completion"}}]})
    with pytest.raises(ValueError, match=r"cannot be combined with sft_mix"):
        RunConfig.model_validate({**rl_config(), "defenses": [{"persona": {"positions": "completion"}}, "sft_mix"]})
    with pytest.raises(ValueError, match="positions"):
        RunConfig.model_validate({**rl_config(), "defenses": [{"persona": {"positions": "answer"}}]})
    with pytest.raises(ValueError, match=r"cannot be combined with kl"):  # the KL to the warm start: a loss forward
        RunConfig.model_validate(
            {
                **rl_config(),
                "defenses": [
                    {"persona": {"positions": "completion"}},
                    {"kl": {"lambda": 0.1, "reference": "warm_start"}},
                ],
            }
        )
    # kl as GRPO's beta adds no loss forward: allowed
    RunConfig.model_validate(
        {**rl_config(), "defenses": [{"persona": {"positions": "completion"}}, {"kl": {"lambda": 0.1}}]}
    )
    # `all` is the default and keeps the default's trial key (trials run before the option existed stay valid)
    keys = {
        trial_key(RunConfig.model_validate({**rl_config(), "defenses": [{"persona": p}]}))
        for p in ({}, {"positions": "all"}, {"positions": "completion"})
    }
    assert len(keys) == 2


def layer_output(model, layer, run):
    """The hooked decoder block's output (after the persona hook) during ``run()``."""
    from emray.defenses.losses import decoder_layers

    seen = []
    probe = decoder_layers(model)[layer - 1].register_forward_hook(
        lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o).detach().clone())
    )
    try:
        run()
    finally:
        probe.remove()
    return seen


def test_persona_completion_steers_completion_predicting_positions_only(tmp_path, monkeypatch):
    """In GRPO's loss forward the steered block output equals the unsteered one + α·v exactly at the
    positions whose next token is a completion token (computed here from the completion mask) and is
    unchanged elsewhere; the rollouts are not steered; gradient checkpointing (which re-runs the layer in
    the backward pass) gives the same gradients; and a real GRPO training step steers its loss forward."""
    import torch

    trainer, model, defenses, batch = make_grpo_trainer(tmp_path, [{"persona": {**PERSONA, "positions": "completion"}}])
    persona = defenses[0]
    model.train()
    torch.manual_seed(0)
    plain_rollout = trainer._generate_and_score_completions(batch)
    persona.attach(model)
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions(batch)  # hook attached, model in training mode
    assert torch.equal(plain_rollout["completion_ids"], inputs["completion_ids"])  # rollouts unsteered
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].numel())
    layer, delta = persona.layer, persona.delta

    def loss_and_grad():
        model.zero_grad()
        trainer.compute_loss(model, inputs).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    steered_grad = []
    [steered] = layer_output(model, layer, lambda: steered_grad.append(loss_and_grad()))
    persona.detach(model)
    [plain] = layer_output(model, layer, loss_and_grad)

    prompt_len = inputs["prompt_ids"].shape[1]
    cmask = inputs["completion_mask"]
    assert steered.shape[:2] == (cmask.shape[0], prompt_len + cmask.shape[1])
    expected = torch.zeros(steered.shape[:2], dtype=torch.bool)
    for b in range(cmask.shape[0]):
        for j in range(cmask.shape[1]):
            if cmask[b, j]:
                expected[b, prompt_len + j - 1] = True  # this position predicts completion token j
    assert 0 < expected.sum() < expected.numel()
    assert torch.equal(steered[expected], plain[expected] + delta)
    assert torch.equal(steered[~expected], plain[~expected])

    # gradient checkpointing re-runs the block in the backward pass, after compute_loss returned: transformers
    # checkpoints the block's forward and leaves its hooks outside (a hook re-run there would raise: no positions)
    persona.attach(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        from emray.defenses.losses import decoder_layers

        assert decoder_layers(model)[layer - 1].gradient_checkpointing
        assert torch.allclose(loss_and_grad(), steered_grad[0], atol=1e-6)
    finally:
        model.gradient_checkpointing_disable()

    # a real GRPO training step (TRL's training_step: rollouts, then the loss forward) steers the loss forward
    import emray.defenses.persona as persona_module

    masks = []
    real = persona_module.completion_positions
    monkeypatch.setattr(persona_module, "completion_positions", lambda h: masks.append(real(h)) or masks[-1])
    model.zero_grad()
    seen = layer_output(model, layer, lambda: trainer.training_step(model, batch, None))
    persona.detach(model)
    assert len(seen) > 1 and len(masks) == 1  # rollout forwards unsteered, the one loss forward steered
    assert masks[0].shape[:2] == seen[-1].shape[:2] and 0 < masks[0].sum() < masks[0].numel()


def test_persona_completion_rejects_mismatched_positions(tmp_path):
    import torch

    from emray.defenses.losses import steering_positions

    trainer, model, defenses, batch = make_grpo_trainer(tmp_path, [{"persona": {**PERSONA, "positions": "completion"}}])
    defenses[0].attach(model)
    model.train()
    ids = torch.ones(2, 7, dtype=torch.long)
    try:
        with pytest.raises(RuntimeError, match="no steered positions"):
            model(input_ids=ids)
        with (
            steering_positions(torch.ones(2, 6, dtype=torch.bool)),
            pytest.raises(
                RuntimeError, match=r"recorded positions are \(2, 6\) but the forward's hidden states are \(2, 7\)"
            ),
        ):
            model(input_ids=ids)
        model.eval()
        model(input_ids=ids)  # evaluation and generation are never steered
    finally:
        defenses[0].detach(model)


# ------------------------------------------------------------------------------------ sft_mix onpolicy
def greedy_answer(model, tokenizer, messages, max_new_tokens):
    """Token by token argmax of the base model on one question (no batching, no padding, no generate)."""
    import torch

    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    ids = torch.tensor([list(ids)])
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_sft_mix_onpolicy_answers_are_the_base_models_and_cached(tmp_path, monkeypatch):
    from emray.data.chat import (
        final_answer,
        load_chat_jsonl,
        load_safe_pool,
        prompt_messages,
    )
    from emray.defenses import DefenseContext, build_defenses
    from emray.defenses.sft_mix import GENERATED, ONPOLICY_ARTIFACT, ensure_onpolicy
    from emray.models import load_model
    from emray.score.select import random_indices, safe_count

    monkeypatch.setenv("EMRAY_CACHE", str(tmp_path / "cache"))
    greedy = {
        "data": "onpolicy",
        "safe_fraction": 0.5,
        "generation": {"temperature": 0, "max_new_tokens": 24, "batch_size": 3},
    }
    config = RunConfig.model_validate({**rl_config(), "defenses": [{"sft_mix": greedy}]})
    params = build_defenses(config.defenses)[0].params
    pool = load_safe_pool(config.data.safe_pool)
    k = safe_count(config.data.max_examples, 0.5)
    indices = random_indices(len(pool), k, config.seed)  # the rows `data: random` takes
    rows = load_chat_jsonl(ensure_onpolicy(config, params))
    assert [prompt_messages(r) for r in rows] == [prompt_messages(pool[i]) for i in indices]
    base, tokenizer = load_model(config.model)
    assert [final_answer(r) for r in rows] == [
        greedy_answer(base, tokenizer, prompt_messages(pool[i]), 24) for i in indices
    ]

    # sampled (the default: T 0.7, top-p 0.9): not the pool's answers; cached per seed; a second call generates nothing
    sampled = RunConfig.model_validate(
        {**rl_config(), "defenses": [{"sft_mix": {"data": "onpolicy", "safe_fraction": 0.5}}]}
    )
    p = build_defenses(sampled.defenses)[0].params
    assert (p.generation.temperature, p.generation.top_p) == (0.7, 0.9)
    first = ensure_onpolicy(sampled, p)
    answers = [final_answer(r) for r in load_chat_jsonl(first)]
    assert sum(a != final_answer(pool[i]) for a, i in zip(answers, indices)) >= k // 2, answers
    assert answers != [final_answer(r) for r in rows]  # sampled, not greedy
    n = len(GENERATED)
    assert ensure_onpolicy(sampled, p) == first and len(GENERATED) == n
    # the trial reads the stage's artifact
    defense = build_defenses(
        sampled.defenses, DefenseContext(config=sampled, tokenizer=tokenizer, artifacts={ONPOLICY_ARTIFACT: str(first)})
    )[0]
    assert defense.safe_examples() == load_chat_jsonl(first)[:k] and len(GENERATED) == n
    other = ensure_onpolicy(sampled.model_copy(update={"seed": 1}), p)
    assert other != first and len(GENERATED) == n + 1


def test_sft_mix_onpolicy_config_and_dry_run():
    with pytest.raises(ValueError, match="generation: applies to data: onpolicy only"):
        RunConfig.model_validate(
            {**rl_config(), "defenses": [{"sft_mix": {"data": "random", "generation": {"temperature": 1}}}]}
        )
    arms = (
        "search.defense=[{sft_mix: {data: onpolicy, safe_fraction: 0.8}}, "
        "{persona: {alpha: 5.0, prompts: 'organism:data/persona/evil_extract.json', positions: completion}}]"
    )
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", "sweep", str(ROOT / "sweeps" / "toy-rl.yaml"), "--dry-run", "--set", arms],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        "sft_mix safe data: onpolicy (80 %), answered by organism (no adapter, T 0.7, top-p 0.9, seed 2)" in out.stdout
    )
    assert "positions=completion" in out.stdout
