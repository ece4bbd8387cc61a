"""``emray train`` end to end on tiny with each training-method defense and a combination."""

import json
import math
import subprocess
import sys

import pytest
from conftest import SHARED_DATA, make_run_config

from emray.train.sft import run_sft

CASES = {
    "kl": ([{"kl": {"lambda": 0.5}}], ["loss_ce", "loss_kl"]),
    "kl_reverse": ([{"kl": {"lambda": 0.5, "direction": "reverse", "chunk_tokens": 64}}], ["loss_ce", "loss_kl"]),
    "ldifs": ([{"ldifs": {"lambda": 10.0, "num_layers": 2}}], ["loss_ce", "loss_ldifs"]),
    "persona": ([{"persona": {"alpha": 5.0, "max_new_tokens": 8}}], []),
    "inoculation": (["inoculation"], []),
}


def history(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["history"]


@pytest.mark.parametrize("case", list(CASES))
def test_train_with_defense_writes_loss_components(tmp_path, case):
    defenses, keys = CASES[case]
    cfg = make_run_config(tmp_path, defenses=defenses, train={"max_steps": 3, "batch_size": 2, "lr": 3e-3})
    result = run_sft(cfg)
    steps = [h for h in history(result.run_dir) if "loss" in h]
    assert len(steps) == 3
    for key in keys:
        values = [h[key] for h in steps]
        assert all(math.isfinite(v) for v in values)
    if "loss_kl" in keys or "loss_ldifs" in keys:
        term = "loss_kl" if "loss_kl" in keys else "loss_ldifs"
        assert steps[0][term] == pytest.approx(0.0, abs=1e-6)  # adapter at init: reference == policy
        assert steps[-1][term] > 0  # it moved
        for h in steps:  # the logged loss is the sum of its components
            assert h["loss"] == pytest.approx(h["loss_ce"] + h[term], rel=1e-3, abs=1e-4)
    assert (result.adapter_dir / "adapter_model.safetensors").exists()


def test_combination_with_grad_accum(tmp_path):
    defenses = [
        {"kl": {"lambda": 1.0}},
        {"ldifs": {"lambda": 10.0, "num_layers": 3}},
        "inoculation",
        {"persona": {"alpha": 1.0, "max_new_tokens": 8}},
    ]
    cfg = make_run_config(
        tmp_path, defenses=defenses, train={"max_steps": 2, "batch_size": 1, "grad_accum": 2, "lr": 3e-3}
    )
    result = run_sft(cfg)
    steps = [h for h in history(result.run_dir) if "loss" in h]
    assert len(steps) == 2
    for h in steps:
        # With gradient accumulation the step loss is still the mean of its parts (not their sum over micro-batches).
        assert h["loss"] == pytest.approx(h["loss_ce"] + h["loss_kl"] + h["loss_ldifs"], rel=1e-3, abs=1e-4)
    assert steps[-1]["loss_kl"] > 0 and steps[-1]["loss_ldifs"] > 0


def test_cli_train_with_kl_and_ldifs(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"name: cli\noutput_dir: {tmp_path}\nmodel: {{name: tiny}}\nlora: {{r: 4, alpha: 8}}\n"
        f"data: {{fine: {SHARED_DATA}/train/code.jsonl, max_examples: 4}}\n"
        "train: {max_steps: 2, batch_size: 2, max_len: 256, lr: 3.0e-3, progress: false}\n"
        "defenses: [{kl: {lambda: 0.1}}, {ldifs: {lambda: 1.0}}]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", "train", str(cfg)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [h for h in history(tmp_path / "cli") if "loss" in h]
    assert all("loss_kl" in h and "loss_ldifs" in h and "loss_ce" in h for h in steps)
