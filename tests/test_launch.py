"""Where a trial's fine-tune runs (emray/train/launch.py): in the trial's process or a Ray Train worker
group, the same adapter; and which specs may run in the trial's process."""

import json

import pytest
from conftest import make_run_config


def _tensors(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_in_trial_and_one_ray_train_worker_train_the_same_adapter(tmp_path):
    import ray
    import torch

    from emray.train.launch import fit

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outs = {}
        for launcher in ("ray_train", "in_trial"):
            cfg = make_run_config(tmp_path, resources={"num_workers": 1, "launcher": launcher})
            outs[launcher] = tmp_path / launcher
            assert fit(cfg, outs[launcher], str(tmp_path / "storage")) == launcher
    finally:
        ray.shutdown()
    ray_train, in_trial = (_tensors(outs[k]) for k in ("ray_train", "in_trial"))
    assert ray_train.keys() == in_trial.keys() and len(ray_train) > 0
    for name, tensor in ray_train.items():
        assert torch.equal(tensor, in_trial[name]), name  # bit for bit: one recipe, one process or another
    histories = [json.loads((outs[k] / "metrics.json").read_text()) for k in ("ray_train", "in_trial")]
    losses = [[h["loss"] for h in m["history"] if "loss" in h] for m in histories]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    for summary in (m["summary"] for m in histories):
        assert summary["world_size"] == 1 and summary["global_step"] == 4 and len(summary["train_nodes"]) == 1


@pytest.mark.parametrize(
    "resources, needs",
    [
        ({"num_workers": 2}, "num_workers: 1 (not 2)"),
        ({"deepspeed": "zero2"}, "deepspeed: none"),
        ({"checkpoint_every": 5}, "checkpoint_every: 0 and max_failures: 0"),
        ({"use_gpu": True}, "use_gpu: false"),
    ],
)
def test_in_trial_refuses_what_needs_a_worker_group(tmp_path, resources, needs):
    with pytest.raises(ValueError, match="launcher: in_trial needs") as err:
        make_run_config(tmp_path, resources={"launcher": "in_trial", **resources})
    assert needs in str(err.value)
    auto = make_run_config(tmp_path, resources=resources)  # auto: the worker group, no error
    assert not auto.resources.runs_in_trial()
    assert make_run_config(tmp_path).resources.runs_in_trial()  # one CPU worker: in the trial's process


def test_the_plan_counts_model_loads(tmp_path):
    from emray.train.launch import describe_launch

    line = describe_launch(make_run_config(tmp_path))
    assert line.startswith("per trial: in the trial's own process") and "base-model loads: 2" in line
    ray_train = make_run_config(tmp_path, resources={"num_workers": 2, "deepspeed": "zero2"})
    line = describe_launch(ray_train)
    assert "Ray Train TorchTrainer, 2 worker(s)" in line and "it needs num_workers: 1 (not 2), deepspeed: none" in line
    assert "base-model loads: 3 (fine-tune 2, evaluation 1)" in line
