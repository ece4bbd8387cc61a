"""Hand-made malformed inputs: each is refused where it enters, with a message that names the file and
line or the key path, and never with a traceback. Fast: nothing here trains or starts Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emray.config import RunConfig
from emray.configio import ConfigError, load_config
from emray.data.chat import DataError, load_chat_jsonl
from emray.data.questions import QuestionError, load_questions
from emray.sweep.spec import load_sweep_spec

ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "%s"}]}\n'

SPEC = """\
name: t
base:
  model: {name: tiny}
  data: {fine: x.jsonl}
  train: {max_steps: 4}
search:
  defense:
    - none
    - {kl: {lambda: [0.1, 1.0]}}
  seeds: [0, 1]
"""


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def cli(argv: list[str], capsys) -> tuple[int, str]:
    from emray.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# -- bytes that are not UTF-8: file and line ----------------------------------------------------------


def test_latin1_byte_in_jsonl_names_file_and_line(tmp_path):
    path = write(tmp_path / "fine.jsonl", (ROW % "ok" + ROW % "ok" + ROW % "caf\xe9").encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_chat_jsonl(path)
    assert str(err.value) == f"{path}:3: byte 0xe9 at column 87 is not UTF-8 (save the file as UTF-8)"


def test_latin1_byte_in_config_yaml_names_file_and_line(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", "model: {name: tiny}\n# caf\xe9\ndata: {fine: x.jsonl}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"^{path}:2: byte 0xe9 at column 6 is not UTF-8"):
        load_config(RunConfig, path)
    code, err = cli(["config", "show", str(path)], capsys)
    assert code == 2 and f"{path}:2: byte 0xe9" in err


def test_latin1_byte_in_question_and_prompt_files(tmp_path):
    from emray.rl.prompt_rows import load_prompts

    questions = write(tmp_path / "q.yaml", "- id: a\n  paraphrases: [caf\xe9]\n".encode("latin-1"))
    with pytest.raises(QuestionError, match=rf"^{questions}:2: byte 0xe9 at column 20 is not UTF-8"):
        load_questions(questions)
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "ok"}\n{"prompt": "\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{prompts}:2: byte 0xe9 at column 13 is not UTF-8"):
        load_prompts(str(prompts))


# -- duplicate YAML keys: both lines ------------------------------------------------------------------


def test_duplicate_yaml_key_in_config_names_both_lines(tmp_path):
    path = write(tmp_path / "c.yaml", "model: {name: tiny}\ndata: {fine: x.jsonl}\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    assert str(err.value) == (
        f"{path}:5: key 'train.lr': duplicate key (first at line 4; YAML would silently keep the last)"
    )
    write(path, "model: {name: tiny}\nmodel: {name: smollm2-135m}\ndata: {fine: x.jsonl}\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: key 'model': duplicate key \(first at line 1"):
        load_config(RunConfig, path)


def test_duplicate_yaml_key_in_spec_and_question_file(tmp_path):
    spec = write(tmp_path / "s.yaml", SPEC.replace("  seeds: [0, 1]", "  seeds: [0, 1]\n  seeds: [2]"))
    with pytest.raises(ConfigError, match=rf"{spec}:11: key 'search.seeds': duplicate key \(first at line 10"):
        load_sweep_spec(spec)
    questions = write(tmp_path / "q.yaml", "- id: a\n  paraphrases: [x]\n  id: b\n")
    with pytest.raises(QuestionError, match=rf"{questions}:3: key '\[0\].id': duplicate key \(first at line 1"):
        load_questions(questions)


# -- search entries: empty or repeated, refused at spec load (so --dry-run catches them) -----------------


def test_empty_defense_list_is_refused_by_dry_run(tmp_path, capsys):
    spec = write(
        tmp_path / "s.yaml",
        SPEC.replace("    - none\n    - {kl: {lambda: [0.1, 1.0]}}\n", "").replace("  defense:\n", "  defense: []\n"),
    )
    code, err = cli(["sweep", str(spec), "--dry-run"], capsys)
    assert code == 2
    assert (
        f"{spec}:7: key 'search.defense': Value error, empty: the sweep would plan no trial; list at least one arm"
        in err
    )
    write(spec, SPEC.replace("seeds: [0, 1]", "seeds: []"))
    with pytest.raises(ConfigError, match=rf"{spec}:10: key 'search.seeds': .*empty.*list at least one seed"):
        load_sweep_spec(spec)


@pytest.mark.parametrize(
    "extra, line, message",
    [
        ("    - none\n", 10, "key 'search.defense[2]': arm none is also planned by search.defense[0] (line 8)"),
        (
            "    - {kl: {lambda: 1.0}}\n",
            10,
            r"key 'search.defense[2]': arm kl(lambda=1) is also planned by search.defense[1] (line 9)",
        ),
        (
            "    - {kl: {}}\n",
            10,  # the default λ (0.1) is the same arm
            "key 'search.defense[2]': arm kl is also planned by search.defense[1] (line 9)",
        ),
        (
            "    - {ldifs: {lambda: [1.0, 1.0]}}\n",
            10,
            "key 'search.defense[2]': arm ldifs(lambda=1) repeats a value within this entry",
        ),
    ],
)
def test_duplicate_arms_are_refused(tmp_path, capsys, extra, line, message):
    spec = write(tmp_path / "s.yaml", SPEC.replace("  seeds:", extra + "  seeds:"))
    with pytest.raises(ConfigError) as err:
        load_sweep_spec(spec)
    assert str(err.value).startswith(f"{spec}:{line}: {message}")
    code, err = cli(["sweep", str(spec), "--dry-run"], capsys)
    assert code == 2 and message in err


def test_duplicate_seeds_are_refused(tmp_path):
    spec = write(tmp_path / "s.yaml", SPEC.replace("seeds: [0, 1]", "seeds: [0, 1, 0]"))
    with pytest.raises(
        ConfigError, match=rf"{spec}:10: key 'search.seeds\[2\]': 0 is listed twice \(also seeds\[0\]\)"
    ):
        load_sweep_spec(spec)


# -- values that make an arm a no-op or infinite -----------------------------------------------------


@pytest.mark.parametrize("steps", [0, -2])
def test_max_steps_zero_or_negative_is_refused(tmp_path, steps):
    spec = write(tmp_path / "s.yaml", SPEC.replace("max_steps: 4", f"max_steps: {steps}"))
    with pytest.raises(ConfigError) as err:
        load_sweep_spec(spec)
    assert (
        f"{spec}:5: key 'base.train.max_steps': Value error, max_steps must be a positive number of steps, "
        f"or -1 for no limit (train `epochs`); got {steps}" in str(err.value)
    )
    assert load_sweep_spec(write(spec, SPEC.replace("max_steps: 4", "max_steps: -1"))).base.train.max_steps == -1


@pytest.mark.parametrize(
    "entry, key",
    [
        ("{interleave: {safe_fraction: 0}}", "defenses[2].interleave.safe_fraction: Input should be greater than 0"),
        (
            "{interleave_plus: {safe_fraction: 0.0}}",
            "defenses[2].interleave_plus.safe_fraction: Input should be greater than 0",
        ),
        ("{kl: {lambda: .inf}}", "defenses[2].kl.lambda: Input should be a finite number"),
        ("{kl: {lambda: .nan}}", "defenses[2].kl.lambda: Input should be a finite number"),
        ("{ldifs: {lambda: inf}}", "defenses[2].ldifs.lambda: Input should be a finite number"),
        ("{persona: {alpha: .inf}}", "defenses[2].persona.alpha: Input should be a finite number"),
        ("{persona: {alpha: [1.0, .nan]}}", "defenses[2].persona.alpha: Input should be a finite number"),
        ("{persona: {alpha: -.inf}}", "defenses[2].persona.alpha: Input should be a finite number"),
    ],
)
def test_no_op_or_infinite_coefficients_are_refused(tmp_path, capsys, entry, key):
    spec = write(tmp_path / "s.yaml", SPEC.replace("  seeds:", f"    - {entry}\n  seeds:"))
    with pytest.raises(ConfigError) as err:
        load_sweep_spec(spec)
    assert f"{spec}:" in str(err.value) and key in str(err.value)
    code, err = cli(["sweep", str(spec), "--dry-run"], capsys)
    assert code == 2 and key in err


def test_infinite_value_in_a_run_config_names_the_key(tmp_path):
    path = write(tmp_path / "c.yaml", "model: {name: tiny}\ndata: {fine: x.jsonl}\ntrain: {lr: .inf}\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: key 'train.lr': Input should be a finite number"):
        load_config(RunConfig, path)


# -- a directory or a symlink loop where a file is expected -------------------------------------------


def test_directory_where_a_file_is_expected(tmp_path, capsys):
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    with pytest.raises(DataError, match=rf"^{folder}: is a directory, expected a data file \(JSONL\)$"):
        load_chat_jsonl(folder)
    with pytest.raises(QuestionError, match=rf"^{folder}: is a directory, expected a question file"):
        load_questions(folder)
    with pytest.raises(ConfigError, match=rf"^{folder}: is a directory, expected a config file$"):
        load_config(RunConfig, folder)
    code, err = cli(["sweep", str(folder), "--dry-run"], capsys)
    assert code == 2 and f"{folder}: is a directory" in err


def test_symlink_loop_and_broken_link_are_named(tmp_path):
    loop = tmp_path / "loop.yaml"
    os.symlink(loop, loop)
    with pytest.raises(ConfigError, match=rf"^{loop}: a symlink loop, expected a config file$"):
        load_config(RunConfig, loop)
    with pytest.raises(DataError, match=rf"^{loop}: a symlink loop"):
        load_chat_jsonl(loop)
    broken = tmp_path / "broken.jsonl"
    os.symlink(tmp_path / "gone.jsonl", broken)
    with pytest.raises(DataError, match=rf"^{broken}: a broken symlink \(its target .*gone.jsonl does not exist\)"):
        load_chat_jsonl(broken)


def test_persona_prompts_bad_json_names_file_and_line(tmp_path):
    from emray.steering.persona_vector import load_persona_prompts

    path = write(tmp_path / "p.json", '{"instruction": [],\n "questions": [}\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: bad JSON"):
        load_persona_prompts(path)
    write(path, "[1]")
    with pytest.raises(ValueError, match=rf"^{path}: expected a JSON object"):
        load_persona_prompts(path)


def test_emray_debug_keeps_the_traceback(tmp_path, monkeypatch):
    from emray.cli import main

    path = write(tmp_path / "c.yaml", "model: {name: tiny}\nmodel: {}\n")
    monkeypatch.setenv("EMRAY_DEBUG", "1")
    with pytest.raises(ConfigError, match="duplicate key"):
        main(["config", "show", str(path)])


# -- a corrupt trial result: reported with its file, the trial runs again ------------------------------


def test_corrupt_result_json_is_named_and_skipped_by_pareto(tmp_path, capsys):
    from sweep_fixture import write_sweep

    sweep = write_sweep(tmp_path)
    results = sorted(sweep.glob("trials/*/result.json"))
    bad, good = results[0], results[1]
    bad.write_text('{"trial_key": "abc", "label"')  # cut short (a full disk)
    good_before = good.read_bytes()
    code, err = cli(["pareto", str(sweep)], capsys)
    assert code == 0
    assert (
        f"[emray] {bad}: corrupt trial result (" in err and "`emray sweep SPEC --resume` runs that trial again" in err
    )
    assert bad.exists() and good.read_bytes() == good_before  # pareto reads, it does not move results
    write(bad, b"\xff\xfe")
    code, err = cli(["pareto", str(sweep)], capsys)
    assert code == 0 and f"{bad}: corrupt trial result" in err


def test_corrupt_result_json_makes_the_sweep_rerun_that_trial(tmp_path, capsys):
    from emray.sweep.runner import read_finished
    from emray.sweep.spec import expand_trials

    spec = write(tmp_path / "s.yaml", SPEC)
    trial = expand_trials(load_sweep_spec(spec))[0]
    folder = tmp_path / "trials" / trial.key
    folder.mkdir(parents=True)
    (folder / "result.json").write_text("[1, 2]")
    assert read_finished(tmp_path, trial) is None
    err = capsys.readouterr().err
    assert (
        f"[emray] {folder / 'result.json'}: corrupt trial result (expected a JSON object, got list); "
        "moved to result.json.corrupt; the trial runs again" in err
    )
    assert not (folder / "result.json").exists() and (folder / "result.json.corrupt").read_text() == "[1, 2]"
    (folder / "result.json").write_text('{"trial_key": "k"}')
    assert read_finished(tmp_path, trial) == {"trial_key": "k"}


# -- a run-config key at the spec's top level: `resources` is the sweep's own section ------------------------


def test_a_run_config_key_at_the_top_level_says_did_you_mean_base(tmp_path, capsys):
    spec = write(tmp_path / "s.yaml", SPEC)
    code, err = cli(["sweep", str(spec), "--dry-run", "--set", "resources.use_gpu=false"], capsys)
    assert code == 2
    assert "key 'resources.use_gpu': unknown key (did you mean base.resources.use_gpu?)" in err, err
    # the same mistake written in the file, and a nested run-config section
    write(spec, SPEC + "resources: {num_workers: 2}\n")
    with pytest.raises(ConfigError, match=r"s.yaml:11: key 'resources.num_workers': unknown key \(did you mean base"):
        load_sweep_spec(spec)
    write(spec, SPEC + "lora: {r: 4}\n")
    with pytest.raises(ConfigError, match=r"key 'lora': unknown key \(did you mean base.lora\?\)"):
        load_sweep_spec(spec)
    # a key neither section has: no guess
    write(spec, SPEC)
    code, err = cli(["sweep", str(spec), "--dry-run", "--set", "resources.use_gpus=false"], capsys)
    assert "key 'resources.use_gpus': unknown key" in err and "did you mean" not in err, err
