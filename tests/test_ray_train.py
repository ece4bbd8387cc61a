"""The Ray Train worker path: DDP over gloo and DeepSpeed ZeRO-2 on CPU (DS_ACCELERATOR=cpu)."""

import json

import pytest

from conftest import make_run_config


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _fit(tmp_path, deepspeed):
    from emray.train.worker import fit_with_ray_train

    cfg = make_run_config(tmp_path, resources={"num_workers": 2, "deepspeed": deepspeed})
    out = tmp_path / f"out-{deepspeed}"
    result = fit_with_ray_train(cfg, out, str(tmp_path / "storage"))
    return result, out


def test_ddp_and_zero2_train_the_same(ray_local, tmp_path):
    ddp, ddp_out = _fit(tmp_path, "none")
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
