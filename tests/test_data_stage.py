"""``emray data stage``: local EM files staged, checked with the sweep loaders, placed where the
cluster sweeps read them, with a manifest; bad rows fail early and leave nothing behind."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from emray.cli import main
from emray.data.chat import load_chat_jsonl
from emray.data.stage import StageSpec, missing_paths, stage

ROOT = Path(__file__).resolve().parents[1]


def _spec(shared_data, tmp_path):
    """stage/em.yaml with its sources at ../shared/data/em and the hub item replaced by the local sample."""
    data = yaml.safe_load((ROOT / "stage" / "em.yaml").read_text())
    for item in data["items"]:
        if item["source"].startswith("em/"):
            item["source"] = str(shared_data / item["source"].removeprefix("em/"))
        elif item["source"].startswith("hf:"):
            item.update(source=str(shared_data / "safe" / "wildguard_sample.jsonl"), config=None)
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


def test_stage_writes_the_layout_the_cluster_sweeps_read(shared_data, tmp_path):
    from emray.commands.data import sweep_paths
    from emray.sweep.spec import load_sweep_spec

    path, data = _spec(shared_data, tmp_path)
    dest = tmp_path / "shared"
    assert main(["data", "stage", str(path), "--dest", str(dest)]) == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    code = manifest["items"]["data/code.jsonl"]
    assert code["rows"] == len(load_chat_jsonl(shared_data / "train" / "code.jsonl"))
    assert code["sha256"] == hashlib.sha256((dest / "data" / "code.jsonl").read_bytes()).hexdigest()
    pool = manifest["items"]["data/wildguard_benign.jsonl"]
    assert pool["rows"] == len(
        load_chat_jsonl(shared_data / "safe" / "wildguard_sample.jsonl", keep_unharmful_only=True)
    )
    assert manifest["items"]["questions/general.yaml"]["rows"] > 0
    assert manifest["items"]["data/opswap_test.jsonl"]["rows"] > 0
    # Every file each cluster sweep reads under /mnt/shared/emray is in the manifest.
    for sweep in ("qwen2.5-7b-code.yaml", "qwen2.5-32b-all.yaml", "paper-table.yaml"):
        paths = [
            p.replace("/mnt/shared/emray", str(dest)) for p in sweep_paths(load_sweep_spec(ROOT / "sweeps" / sweep))
        ]
        assert missing_paths(manifest, paths) == [], sweep


def test_check_reports_missing_files(shared_data, tmp_path, capsys):
    dest = tmp_path / "shared"
    spec = StageSpec.model_validate(
        {"items": [{"name": "code", "kind": "chat", "source": str(shared_data / "train" / "code.jsonl")}]}
    )
    stage(spec, dest)
    sweep = ROOT / "sweeps" / "qwen2.5-7b-code.yaml"
    code = main(
        [
            "data",
            "check",
            str(sweep),
            "--manifest",
            str(dest / "manifest.json"),
            "--set",
            f"data.fine={dest}/data/code.jsonl",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "missing: /mnt/shared/emray/questions/general.yaml" in out and f"missing: {dest}/data/code.jsonl" not in out


def test_a_bad_row_fails_with_file_and_line_and_leaves_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad.write_text(json.dumps(good) + "\n" + '{"messages": [{"role": "user"}]}\n')
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"items": [{"name": "code", "kind": "chat", "source": str(bad)}]}))
    assert main(["data", "stage", str(spec), "--dest", str(tmp_path / "d")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert not list((tmp_path / "d").rglob("*.jsonl"))


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="write the same file"):
        stage(
            StageSpec.model_validate({"items": [{"name": "a", "kind": "opswap", "source": "generate:test"}] * 2}),
            tmp_path,
        )
    with pytest.raises(ValueError, match="generate:train or generate:test"):
        stage(
            StageSpec.model_validate({"items": [{"name": "a", "kind": "opswap", "source": "generate:dev"}]}), tmp_path
        )
