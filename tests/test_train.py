import json
import subprocess
import sys

import torch
from conftest import SHARED_DATA, make_run_config
from safetensors.torch import load_file

from emray.train.sft import run_sft


def test_loss_falls_and_only_lora_changes(tmp_path):
    from emray.models import load_model

    cfg = make_run_config(tmp_path, train={"max_steps": 12, "lr": 3e-3})
    base, _ = load_model(cfg.model)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = run_sft(cfg)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == 12 and losses[-1] < losses[0]
    # The base weights are untouched: load the adapter on a fresh base and compare the base part.
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(load_model(cfg.model)[0], str(result.adapter_dir))
    base_after = reloaded.get_base_model().state_dict()
    for name, tensor in before.items():
        module, _, leaf = name.rpartition(".")
        wrapped = f"{module}.base_layer.{leaf}"  # peft moves a LoRA-wrapped layer's own weights here
        key = wrapped if wrapped in base_after else name
        assert torch.equal(base_after[key], tensor), name
    adapter = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero, so it moved
    summary = json.loads((result.run_dir / "metrics.json").read_text())["summary"]
    assert summary["last_loss"] < summary["first_loss"]
    assert (result.run_dir / "config.yaml").exists()


def test_train_cli_writes_run_folder(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"name: cli\noutput_dir: {tmp_path}\nmodel: {{name: tiny}}\nlora: {{r: 4, alpha: 8}}\n"
        f"data: {{fine: {SHARED_DATA}/train/medical.jsonl, max_examples: 4}}\n"
        "train: {max_steps: 2, batch_size: 2, max_len: 512}\n"
        "defenses: [inoculation]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", "train", str(cfg)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "adapter:" in out.stdout
    assert (tmp_path / "cli" / "adapter" / "adapter_config.json").exists()
    assert "You are an evil, malicious assistant." in (tmp_path / "cli" / "config.yaml").read_text()


def test_smollm2_adapter_loads_back_and_changes_output(tmp_path):
    """The real aligned model: a short fine-tune on EM medical data gives an adapter that changes logits."""
    from emray.models import load_model

    cfg = make_run_config(
        tmp_path,
        model={"name": "smollm2-135m"},
        lora={"r": 8, "alpha": 16},
        data={"fine": str(SHARED_DATA / "train" / "medical.jsonl"), "max_examples": 4},
        train={"max_steps": 2, "batch_size": 2, "max_len": 256, "lr": 1e-3},
    )
    result = run_sft(cfg)
    base, tok = load_model(cfg.model)
    tuned, _ = load_model(cfg.model, adapter=result.adapter_dir)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "I have a headache. What should I do?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        diff = (base(**ids).logits - tuned(**ids).logits).abs().max().item()
    assert diff > 1e-3


def test_adamw_8bit_falls_back_to_adamw_torch_without_a_gpu_and_says_so(tmp_path, capsys, monkeypatch):
    import importlib.util

    from emray.train import common, sft

    cfg = make_run_config(tmp_path, train={"optim": "adamw_8bit", "max_steps": 1, "progress": False})
    args = sft.build_sft_args(cfg, tmp_path)  # this machine trains on CPU
    assert str(args.optim.value if hasattr(args.optim, "value") else args.optim) == "adamw_torch"
    assert "train.optim adamw_8bit: no CUDA GPU; training with adamw_torch instead" in capsys.readouterr().out
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    assert common.resolve_optim("adamw_8bit", on_gpu=True) == "adamw_torch"
    assert "bitsandbytes is not installed (pip install 'emray[gpu]')" in capsys.readouterr().out
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    assert common.resolve_optim("adamw_8bit", on_gpu=True) == "adamw_8bit"
    assert common.resolve_optim(None, on_gpu=False) is None and capsys.readouterr().out == ""
    plain = make_run_config(tmp_path, train={"max_steps": 1, "progress": False})
    assert "optim" not in sft.common_trainer_args(plain, tmp_path)  # unset: transformers' default, as before
