"""docs/adding-a-defense.md's worked example, run as written: one file registers a new defense that then
validates in configs, trains under SFT (its term exactly 0 at the first step, the loss CE + term) and
takes a GRPO step on the organism, with nothing else in emray changed."""

import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
from conftest import make_run_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weight_l2():
    """The doc's first python block, executed as a module (it registers ``weight_l2``)."""
    text = (ROOT / "docs" / "adding-a-defense.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("emray_doc_weight_l2")
    sys.modules[module.__name__] = module
    exec(compile(code, "docs/adding-a-defense.md", "exec"), module.__dict__)
    return module.WeightL2


def test_config_validates_the_new_defense(weight_l2, tmp_path):
    from emray.config import RunConfig

    cfg = make_run_config(tmp_path, defenses=[{"weight_l2": {"lambda": 0.5}}])
    assert isinstance(cfg.defenses[0].params, weight_l2.Params) and cfg.defenses[0].params.lam == 0.5
    with pytest.raises(
        ValueError, match=r"defenses\[0\]\.weight_l2\.lambda: Input should be greater than or equal to 0"
    ):
        RunConfig.model_validate({"data": {"fine": "x.jsonl"}, "defenses": [{"weight_l2": {"lambda": -1}}]})


def test_sft_trains_with_the_new_defense(weight_l2, tmp_path):
    from emray.train.recipe import fine_tune

    cfg = make_run_config(
        tmp_path, defenses=[{"weight_l2": {"lambda": 100.0}}], train={"max_steps": 3, "batch_size": 2, "lr": 3e-3}
    )
    history = json.loads((fine_tune(cfg).run_dir / "metrics.json").read_text())["history"]
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 3
    assert steps[0]["loss_weight_l2"] == pytest.approx(0.0, abs=1e-9)  # LoRA B = 0: no update yet
    assert steps[-1]["loss_weight_l2"] > 0 and math.isfinite(steps[-1]["loss_weight_l2"])
    for h in steps:  # the logged loss is the sum of its parts
        assert h["loss"] == pytest.approx(h["loss_ce"] + h["loss_weight_l2"], rel=1e-3, abs=1e-5)


def direct_weight_l2(model, lam: float) -> float:
    """λ · Σ‖(α/r) B A‖² over the LoRA modules, from the weights themselves."""
    total = 0.0
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            delta = module.lora_B["default"].weight @ module.lora_A["default"].weight * module.scaling["default"]
            total += float(delta.pow(2).sum())
    return lam * total


def test_grpo_step_with_the_new_defense(weight_l2, tmp_path):
    """GRPO's loss adds the term: with the LoRA B matrices moved off zero, the first logged value equals
    the penalty computed from the weights before training."""
    import torch
    from test_rl import make_grpo_trainer

    trainer, model, defenses, _ = make_grpo_trainer(tmp_path, [{"weight_l2": {"lambda": 100.0}}])
    assert [type(d) for d in defenses] == [weight_l2] and defenses[0].has_loss_term()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    expected = direct_weight_l2(model, 100.0)
    assert expected > 0
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss_weight_l2" in h]
    assert len(logged) == trainer.args.max_steps
    assert float(logged[0]["loss_weight_l2"]) == pytest.approx(expected, rel=1e-3)
