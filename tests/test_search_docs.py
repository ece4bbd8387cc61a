"""docs/search.md: every spec on the page plans as the page says (``emray sweep SPEC --dry-run``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from emray.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "search.md"
SPECS = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_a_spec_for_each_algorithm_and_models():
    text = "\n".join(SPECS)
    for algorithm in ("grid", "random", "optuna", "dose_search"):
        assert f"algorithm: {algorithm}" in text
    assert "models: [" in text and "num_samples:" in text and "log: true" in text


@pytest.mark.parametrize("spec", SPECS, ids=[re.search(r"name: (\S+)", s)[1] for s in SPECS])
def test_each_spec_on_the_page_dry_runs_to_the_count_it_states(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the specs' storage, sweeps_out, is relative
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    name = re.search(r"name: (\S+)", spec)[1]
    count = re.search(rf"^sweep {name}: (.+?), at most \d+ at once$", out, re.M)[1]
    assert f"`{count}`" in PAGE.read_text() or f"{name}: {count}" in PAGE.read_text(), count
    planned = re.findall(r"^ +\d+ +\S+ +(\S+) +seed=(\d+) +key=", out, re.M)
    if "optuna" not in count:  # Optuna proposes its trials as it goes: none planned ahead
        assert len(planned) == int(re.search(r"(\d+) trials", count)[1])


TUNE = PAGE.with_name("tune-a-real-model.md")


def _sets(command: str) -> list[str]:
    import shlex

    words = shlex.split(command.replace("\\\n", " "))
    return [words[i + 1] for i, w in enumerate(words) if w == "--set"]


def test_the_tune_a_real_model_page_plans_from_the_template(tmp_path, monkeypatch, capsys):
    """docs/tune-a-real-model.md: its commands, with its template, plan (dry-run, the data being on a
    cluster); its persona snippet sweeps the layer."""
    import yaml

    text = TUNE.read_text()
    assert "sweeps/qwen2.5-7b-code.yaml" in text
    monkeypatch.chdir(tmp_path)
    template = str(PAGE.parents[1] / "sweeps" / "qwen2.5-7b-code.yaml")
    commands = re.findall(r"^(emray sweep sweeps/my-model\.yaml .*?)(?=\n[^ ]|\n$)", text, re.M | re.S)
    assert len(commands) == 2, commands
    for command in commands:
        args = ["sweep", template, "--dry-run", "--no-file-check"]
        args += [a for s in _sets(command) for a in ("--set", s)]
        assert main(args) == 0, command
    out = capsys.readouterr().out
    assert "sweep my-model-lr-check: 1 trials (grid)" in out
    snippet = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "persona" in b)
    defense = yaml.safe_load(snippet)["search"]["defense"]
    args = ["sweep", template, "--dry-run", "--no-file-check", "--set", f"search.defense={json.dumps(defense)}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sweep qwen7b-code: 27 trials (grid)" in out  # 3 α × 3 layers × 3 seeds
    assert {int(n) for n in re.findall(r"persona\([^)]*layer=(\d+)\)", out)} == {14, 19, 24}
