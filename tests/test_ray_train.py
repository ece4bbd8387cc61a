"""The Ray Train worker path on CPU (DS_ACCELERATOR=cpu): DDP over gloo, DeepSpeed ZeRO-2 and ZeRO-3,
and a fine-tune that survives a killed worker by resuming from its last reported checkpoint."""

import json
import os
import signal
import time

import pytest
from conftest import make_run_config
from transformers import TrainerCallback


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _fit(tmp_path, deepspeed, name=None, trainer_callbacks=(), **resources):
    from emray.train.worker import fit_with_ray_train

    cfg = make_run_config(tmp_path, resources={"num_workers": 2, "deepspeed": deepspeed, **resources})
    out = tmp_path / f"out-{name or deepspeed}"
    result = fit_with_ray_train(cfg, out, str(tmp_path / "storage"), trainer_callbacks=trainer_callbacks)
    return result, out


def _adapter(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def ddp_run(ray_local, tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("ddp"), "none")


# slow (3.5 min): the default run keeps DeepSpeed in test_zero3_saves_the_gathered_adapter and DDP in the killed-worker test
@pytest.mark.slow
def test_ddp_and_zero2_train_the_same(ddp_run, tmp_path):
    ddp, ddp_out = ddp_run
    zero2, zero2_out = _fit(tmp_path, "zero2")
    for result, out in ((ddp, ddp_out), (zero2, zero2_out)):
        assert result.metrics["world_size"] == 2
        assert result.checkpoint is not None  # rank 0 reported its adapter
        assert (out / "adapter" / "adapter_model.safetensors").exists()
        history = json.loads((out / "metrics.json").read_text())["history"]
        assert sum("loss" in h for h in history) == 4
    # Same data, seed and global batch: ZeRO-2 partitions optimizer state, it must not change the math.
    assert zero2.metrics["train_loss"] == pytest.approx(ddp.metrics["train_loss"], rel=1e-5)
    assert zero2.metrics["last_loss"] < zero2.metrics["first_loss"] + 0.05


def test_zero3_saves_the_gathered_adapter(ddp_run, tmp_path, tiny_path):
    """ZeRO-3 shards the LoRA weights; the saved adapter must be the gathered, trained one."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ddp, ddp_out = ddp_run
    zero3, zero3_out = _fit(tmp_path, "zero3")
    assert zero3.metrics["world_size"] == 2
    assert zero3.metrics["train_loss"] == pytest.approx(ddp.metrics["train_loss"], rel=1e-4)

    weights, reference = _adapter(zero3_out), _adapter(ddp_out)
    assert sorted(weights) == sorted(reference) and any("lora_A" in k for k in weights)
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    hidden = base.config.hidden_size
    for key, tensor in weights.items():
        # Shapes of the whole matrices (r=8), not the zero-sized shards an ungathered save writes.
        assert tensor.shape == reference[key].shape and tensor.numel() > 0, key
        assert 8 in tensor.shape and (hidden in tensor.shape or "lora_B" in key or "lora_A" in key), key
        torch.testing.assert_close(tensor, reference[key], atol=2e-4, rtol=1e-3)
    assert any(reference[k].abs().sum() > 0 for k in reference if "lora_B" in k)  # B starts at 0: it trained

    model = PeftModel.from_pretrained(base, str(zero3_out / "adapter"))
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert not torch.allclose(tuned, plain, atol=1e-5)


class KillOnce(TrainerCallback):
    """SIGKILL the rank-1 worker process at ``step``, on the first attempt only (a marker file says so).

    It waits a few seconds first so the Ray Train controller (polling every 2 s) has registered the
    checkpoint rank 0 reported before the kill.
    """

    def __init__(self, marker, step, wait_s=5.0):
        self.marker, self.step, self.wait_s = str(marker), step, wait_s

    def on_step_end(self, args, state, control, **kwargs):
        import ray.train

        if (
            state.global_step != self.step
            or ray.train.get_context().get_world_rank() != 1
            or os.path.exists(self.marker)
        ):
            return
        with open(self.marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(self.wait_s)
        os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_resumes_from_last_checkpoint(ddp_run, tmp_path):
    import test_ray_train
    import torch
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(test_ray_train)  # workers cannot import the tests folder
    ddp, ddp_out = ddp_run
    marker = tmp_path / "killed.pid"
    result, out = _fit(
        tmp_path,
        "none",
        name="killed",
        checkpoint_every=2,
        max_failures=2,
        trainer_callbacks=[KillOnce(marker, step=3)],
    )
    assert marker.exists()  # the worker really was killed mid-run
    killed_pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed_pid, 0)
    # The restarted group resumed at step 2 (the last checkpoint); the log history of steps 1-2 came
    # back from the checkpoint, so each step is logged once.
    assert result.metrics["resumed_from_step"] == 2
    assert result.metrics["global_step"] == 4
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]
    # The same final adapter as the uninterrupted run: optimizer, scheduler and RNG state were restored.
    weights, reference = _adapter(out), _adapter(ddp_out)
    assert sorted(weights) == sorted(reference)
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], atol=2e-4, rtol=1e-3)
    # Ray Train kept only the last checkpoint (the final adapter); the step-2 one was pruned.
    kept = sorted(
        p.name
        for p in (tmp_path / "storage" / "train-out-killed").iterdir()
        if p.is_dir() and p.name.startswith("checkpoint_")
    )
    assert len(kept) == 1
    assert (tmp_path / "storage" / "train-out-killed" / kept[0] / "adapter_model.safetensors").exists()
