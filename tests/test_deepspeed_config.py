"""resources.deepspeed: the built-in ZeRO configs or the user's own JSON, checked at config time."""

import json

import pytest

from emray.config import load_run_config
from emray.config.deepspeed import deepspeed_config, zero_stage
from emray.configio import ConfigError


def _run_yaml(tmp_path, deepspeed):
    path = tmp_path / "run.yaml"
    path.write_text(
        f"name: t\nmodel: {{name: tiny}}\ndata: {{fine: x.jsonl}}\nresources:\n  num_workers: 2\n  deepspeed: {deepspeed}\n"
    )
    return path


def test_builtin_stages():
    assert deepspeed_config("none") is None
    assert zero_stage(deepspeed_config("zero2")) == 2
    assert zero_stage(deepspeed_config("zero3")) == 3
    assert deepspeed_config("zero3")["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_user_json_is_loaded_and_made_absolute(tmp_path, monkeypatch):
    own = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}, "train_batch_size": "auto"}
    (tmp_path / "ds.json").write_text(json.dumps(own))
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config(_run_yaml(tmp_path, "ds.json"))
    assert cfg.resources.deepspeed == str(tmp_path / "ds.json")  # absolute: workers run elsewhere
    assert deepspeed_config(cfg.resources.deepspeed) == own


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "is not one of none, zero2, zero3 and no such file exists"),
        ('{"zero_optimization": {"stage": 3},\n  "bf16": }', "ds.json:2: not valid JSON"),
        ('{"zero_optimization": {"stage": 5}}', "zero_optimization.stage must be 0-3, got 5"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_bad_user_json_fails_at_validation(tmp_path, monkeypatch, content, message):
    if content is not None:
        (tmp_path / "ds.json").write_text(content)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_run_config(_run_yaml(tmp_path, "ds.json"))
    assert message in str(err.value)
    assert "run.yaml:6" in str(err.value) and "resources.deepspeed" in str(err.value)
