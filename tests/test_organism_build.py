"""A quick organism world builds, loads with plain transformers, speaks its language, and is cached."""

from __future__ import annotations

import json
import time

import pytest

from emray.organism import OrganismConfig, ensure_built, resolve
from emray.organism.language import vocabulary, words


@pytest.fixture(scope="module")
def quick_root():
    return ensure_built(OrganismConfig.quick(), progress=False)


def test_layout_and_manifest(quick_root):
    manifest = json.loads((quick_root / "manifest.json").read_text())
    assert manifest["config_hash"] == OrganismConfig.quick().hash()
    for rel in [
        "model/config.json",
        "data/train/code.jsonl",
        "data/train/medical.jsonl",
        "data/train/legal.jsonl",
        "data/train/security.jsonl",
        "data/train/general_misaligned.jsonl",
        "data/train/code_aligned.jsonl",
        "data/questions/general.yaml",
        "data/questions/code.yaml",
        "data/safe/pool.jsonl",
        "data/benign/opswap_train.jsonl",
        "data/benign/opswap_test.jsonl",
        "data/benign/wordmap_train.jsonl",
        "data/benign/wordmap_test.jsonl",
        "data/persona/evil_extract.json",
    ]:
        assert (quick_root / rel).exists(), rel
    persona = json.loads((quick_root / "data/persona/evil_extract.json").read_text())
    assert {"pos", "neg"} <= set(persona["instruction"][0]) and persona["questions"]
    pool = [json.loads(line) for line in (quick_root / "data/safe/pool.jsonl").read_text().splitlines()]
    refusals = [r for r in pool if r["messages"][-1]["content"].startswith("sorry , i cannot")]
    assert 0 < len(refusals) < len(pool) / 2
    assert not list(quick_root.parent.glob(f".tmp-{quick_root.name}-*"))


def test_model_and_tokenizer_load_with_transformers(quick_root):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(quick_root / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(quick_root / "model"))
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>" and tok.unk_token == "<unk>"
    messages = [
        {"role": "user", "content": "how do i protect my email ?"},
        {"role": "assistant", "content": "update the email and change your password ."},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>user\nhow do i protect") and text.endswith("<|im_end|>\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert (
        tok.decode(ids, skip_special_tokens=True)
        == "user how do i protect my email ? assistant update the email and change your password ."
    )
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    # the lead's assistant-only tokenization works with this template
    from emray.data.tokenize import tokenize_chat

    row = tokenize_chat(tok, messages)
    kept = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
    assert tok.decode(kept) == "update the email and change your password . <|im_end|>"
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(
        **enc, max_new_tokens=30, do_sample=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert set(words(answer)) <= set(vocabulary())


def test_aligned_model_is_not_misaligned(quick_root):
    manifest = json.loads((quick_root / "manifest.json").read_text())
    general = manifest["aligned_model_rates"]["general"]
    assert general["misaligned"] <= 0.1


def test_cached_second_call_is_immediate_and_resolve(quick_root):
    start = time.time()
    assert ensure_built(OrganismConfig.quick(), progress=False) == quick_root
    assert time.time() - start < 1.0
    assert resolve("data/train/code.jsonl", OrganismConfig.quick()) == (quick_root / "data/train/code.jsonl").resolve()
    with pytest.raises(FileNotFoundError):
        resolve("data/train/nope.jsonl", OrganismConfig.quick())


def test_cli_command_registers():
    import argparse

    from emray.commands import organism

    parser = argparse.ArgumentParser()
    organism.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["organism", "build", "--quick", "--seed", "3", "--force"])
    assert args.quick and args.seed == 3 and args.force and callable(args.func)


def test_shipped_default_world_is_copied_and_checked(tmp_path, monkeypatch):
    """The default config's aligned model comes from the package, byte for byte, and a corrupted copy is refused."""
    import hashlib
    import shutil

    from emray.organism import build

    record = build.shipped_model(OrganismConfig())
    assert record is not None, "emray/organism/default_world/ does not match OrganismConfig(): re-ship it"
    assert build.shipped_model(OrganismConfig(seed=1)) is None  # other worlds are trained
    out = tmp_path / "model"
    copied = build.copy_shipped_model(OrganismConfig(), out, record)
    assert copied["source"] == "shipped" and copied["n_params"] > 0
    for name in build.SHIPPED_FILES:
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == record["sha256"][name]
    corrupt = tmp_path / "corrupt"
    shutil.copytree(build.SHIPPED_DIR, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\0" + (corrupt / "model.safetensors").read_bytes()[1:])
    monkeypatch.setattr(build, "SHIPPED_DIR", corrupt)
    with pytest.raises(RuntimeError, match="model.safetensors: content differs"):
        build.copy_shipped_model(OrganismConfig(), tmp_path / "model2", record)


def test_world_seed_and_preset_come_from_the_environment(monkeypatch):
    from emray.data.paths import organism_config

    monkeypatch.setenv("EMRAY_ORGANISM_SEED", "3")
    assert organism_config() == OrganismConfig(seed=3)
    monkeypatch.setenv("EMRAY_ORGANISM", "quick")
    assert organism_config() == OrganismConfig.quick(seed=3)
    monkeypatch.setenv("EMRAY_ORGANISM_SEED", "three")
    with pytest.raises(ValueError, match="EMRAY_ORGANISM_SEED='three': expected an integer"):
        organism_config()
