import subprocess
import sys

import pytest

from emray.config import RunConfig, load_run_config
from emray.configio import ConfigError

GOOD = """\
name: demo
model: {name: tiny}
data:
  fine: data/code.jsonl
train:
  lr: 1.0e-4
defenses:
  - {inoculation: {prompt: be evil}}
"""


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_config_resolves_defaults_and_defenses(tmp_path):
    cfg = load_run_config(write(tmp_path, GOOD))
    assert cfg.lora.r == 32 and cfg.lora.alpha == 64 and cfg.lora.rslora
    assert [d.name for d in cfg.defenses] == ["inoculation"]
    assert cfg.defenses[0].params.prompt == "be evil"


def test_unknown_key_names_file_key_and_line(tmp_path):
    path = write(tmp_path, GOOD.replace("  lr: 1.0e-4", "  lr: 1.0e-4\n  learning_rat: 3"))
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert f"{path}:7: key 'train.learning_rat': unknown key" in str(err.value)


def test_wrong_type_names_key_path(tmp_path):
    path = write(tmp_path, GOOD.replace("lr: 1.0e-4", "lr: fast"))
    with pytest.raises(ConfigError, match=r"run.yaml:6: key 'train.lr': Input should be a valid number"):
        load_run_config(path)


def test_unknown_defense_lists_available(tmp_path):
    path = write(tmp_path, GOOD.replace("{inoculation:", "{vaccine:"))
    with pytest.raises(ConfigError, match=r"defenses\[0\]: unknown defense 'vaccine'; available: .*inoculation"):
        load_run_config(path)


def test_bad_defense_param_names_its_path(tmp_path):
    path = write(tmp_path, GOOD.replace("prompt: be", "promt: be"))
    with pytest.raises(ConfigError, match=r"defenses\[0\]\.inoculation\.promt"):
        load_run_config(path)


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = load_run_config(path, ["train.lr=0.002", "model.name=smollm2-135m"])
    assert cfg.train.lr == 0.002 and cfg.model.name == "smollm2-135m"
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_run_config(path, ["train.batch_size=-1"])


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError, match="key 'data': Field required"):
        load_run_config(write(tmp_path, "name: x\n"))


def test_config_show_cli(tmp_path):
    path = write(tmp_path, GOOD)
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", "config", "show", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "rslora: true" in out.stdout and "prompt: be evil" in out.stdout
    bad = write(tmp_path, GOOD + "bogus: 1\n", "bad.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", "config", "show", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "key 'bogus': unknown key" in out.stderr


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "emray.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("train", "config"):
        assert command in out.stdout


def test_run_config_roundtrips(tmp_path):
    cfg = load_run_config(write(tmp_path, GOOD))
    again = RunConfig.model_validate(cfg.model_dump(by_alias=True))
    assert again == cfg


def test_benign_train_in_data_is_refused_with_where_it_moved(tmp_path):
    path = write(
        tmp_path, GOOD.replace("  fine: data/code.jsonl", "  fine: data/code.jsonl\n  benign_train: [b.jsonl]")
    )
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert "data.benign_train was removed" in str(err.value) and "benign.train" in str(err.value)


def test_benign_section_and_eval_benign_conflict(tmp_path):
    text = GOOD + "benign: {train: [wordmap], test: [wordmap]}\neval: {benign: [opswap]}\n"
    with pytest.raises(ConfigError) as err:
        load_run_config(write(tmp_path, text))
    assert "eval.benign and benign.test are both set" in str(err.value)


def test_benign_run_is_the_same_trial_on_the_benign_tasks(tmp_path):
    from emray.benign import make_task
    from emray.config.fine_tunes import benign_run
    from emray.data.training import load_training_examples

    text = GOOD + (
        "benign: {train: [wordmap, opswap], test: [wordmap], max_steps: 7, lr: 2.0e-3, max_test: 5}\n"
        "eval: {general: q.yaml, in_domain: [c.yaml]}\nseed: 3\n"
    )
    narrow = load_run_config(write(tmp_path, text))
    run = benign_run(narrow)
    assert run.scenario == "benign" and run.seed == 3 and run.defenses == narrow.defenses and run.lora == narrow.lora
    assert (run.train.max_steps, run.train.lr, run.train.batch_size) == (7, 2.0e-3, narrow.train.batch_size)
    assert (run.eval.general, run.eval.in_domain, run.eval.benign, run.eval.max_benign) == (None, [], ["wordmap"], 5)
    rows = load_training_examples(run)
    assert rows == make_task("wordmap", "train") + make_task("opswap", "train")
    test_rows = make_task("wordmap", "test")
    assert not {r["messages"][0]["content"] for r in rows} & {r["messages"][0]["content"] for r in test_rows}
    with pytest.raises(ValueError, match="no `benign` section"):
        benign_run(load_run_config(write(tmp_path, GOOD, "plain.yaml")))
