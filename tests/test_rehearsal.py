"""The real-model spec, rehearsed (docs/cluster.md "Rehearsal"): ``sweeps/qwen2.5-7b-code.yaml`` itself,
its data staged from ../shared/data/em by ``emray data stage`` as docs/cluster.md tells a user, with only
what cannot fit on a 2-core CPU machine changed by ``--set``: SmolLM2-135M for Qwen2.5-7B, sizes, storage,
``use_gpu: false``, and the judge (SmolLM2-135M-Instruct served by vLLM: a bad judge, most answers
unscored; the point is the path). As the spec says: two Ray Train workers under DeepSpeed ZeRO-2 with
checkpoints, ``eval.generator: vllm``, the benign fine-tunes, plots, the report, W&B offline.

The default run keeps one arm, interleave_plus (the held-out-domain ensemble, pool scores, a selection),
through one vLLM server that is both the judge and the generator (adapters hot-loaded); ``make test-slow``
runs every arm type with a vLLM server started per evaluation, the spec's own path (docs/cluster.md
"Rehearsal test" has both times).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SMOLLM2_SERVED, needs_vllm, smollm2_server_fixture

pytestmark = [pytest.mark.vllm, needs_vllm]

SPEC = ROOT / "sweeps" / "qwen2.5-7b-code.yaml"
SERVED = SMOLLM2_SERVED
# Every arm type of the spec at one dose. persona runs the greedy extraction: the spec's reference
# extraction keeps the pairs the judge scores, and SmolLM2 scores none of them (TooFewKept: 0 of 24).
ALL_ARMS = (
    "[none, {kl: {lambda: 0.1}}, {ldifs: {lambda: 1.0, features: normalized, layers: reference}}, "
    "{persona: {alpha: 5.0, extraction: greedy}}, inoculation, {interleave: {safe_fraction: 0.05}}, "
    "{interleave_plus: {safe_fraction: 0.05, epsilon: 1.0}}, {interleave_pp: {safe_fraction: 0.05, epsilon: 1.0}}]"
)


def stage_em(shared_data: Path, dest: Path, pool_rows: int | None = None) -> Path:
    """``emray data stage`` of stage/em.yaml, its ``em/`` sources at ../shared/data/em and the hub item (no
    network here) replaced by the local WildGuardMix sample, as stage/em.yaml's comment allows."""
    from emray.cli import main

    data = yaml.safe_load((ROOT / "stage" / "em.yaml").read_text())
    for item in data["items"]:
        if item["source"].startswith("em/"):
            item["source"] = str(shared_data / item["source"].removeprefix("em/"))
        elif item["source"].startswith("hf:"):
            item.update(source=str(shared_data / "safe" / "wildguard_sample.jsonl"), config=None, limit=pool_rows)
    spec = dest.parent / "stage.yaml"
    spec.write_text(yaml.safe_dump(data))
    assert main(["data", "stage", str(spec), "--dest", str(dest)]) == 0
    return dest


def rehearsal_overrides(dest: Path, storage: Path, judge_url: str, defense: str, steps: int) -> list[str]:
    """The --set lines: the model, sizes, storage, the staged paths, the judge; nothing else of the spec."""
    return [
        f"storage={storage}",
        "model.name=smollm2-135m",
        "model.dtype=auto",  # bfloat16 on CPU: slow autocast, and not what a CPU run of emray uses
        f"data.fine={dest}/data/code.jsonl",
        f"data.safe_pool={dest}/data/wildguard_benign.jsonl",
        "data.max_examples=16",
        f"eval.general={dest}/questions/general.yaml",
        f"eval.in_domain=[{dest}/questions/code.yaml]",
        f"train.max_steps={steps}",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.max_len=256",
        "eval.samples_per_paraphrase=1",
        "eval.max_questions=2",
        "eval.max_new_tokens=16",
        f"eval.judge.base_url={judge_url}/v1",
        f"eval.judge.model={SERVED}",
        f"benign.max_steps={steps}",
        "benign.max_test=2",
        "base.resources.use_gpu=false",
        # Two 1-CPU workers beside the Tune trial's 0.01 CPU do not fit a 2-CPU node: they wait for the
        # 30-minute worker-start timeout (found by the rehearsal; docs/cluster.md "Rehearsal").
        "base.resources.cpus_per_worker=0.5",
        f"base.resources.checkpoint_every={max(1, steps // 2)}",
        "resources.max_concurrent_trials=1",
        "resources.gpus_for_stages=0",
        "resources.cpus_for_stages=1",
        "search.seeds=[0]",
        f"search.defense={defense}",
    ]


def run_sweep(overrides: list[str], timeout: float) -> subprocess.CompletedProcess:
    args = [a for o in overrides for a in ("--set", o)]
    return subprocess.run(
        [sys.executable, "-m", "emray.cli", "sweep", str(SPEC), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )


# the judge; with LoRA on (the spec's lora.r), also the generator for ``eval.vllm.url``
judge_server = smollm2_server_fixture("rehearsal-judge-log", max_lora_rank=32)


def check_finished(out: subprocess.CompletedProcess, storage: Path, arms: list[str]) -> list[dict]:
    """Every arm finished: a results row each, trained by 2 ZeRO-2 workers, its plots, report and W&B runs."""
    assert out.returncode == 0, (out.stdout[-4000:], out.stderr[-4000:])
    assert f"{len(arms)} finished (0 cached), 0 failed" in out.stdout, out.stdout[-3000:]
    sweep = storage / "qwen7b-code"
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert sorted(r["label"].split("(")[0] for r in rows) == sorted(arms)
    for row in rows:
        assert isinstance(row["benign_accuracy"], (int, float)), row
        trial = sweep / "trials" / row["trial_key"]
        for fine_tune in (trial, trial / "benign"):  # both fine-tunes: 2 ranks, under the spec's ZeRO-2
            assert json.loads((fine_tune / "metrics.json").read_text())["summary"]["world_size"] == 2
        assert json.loads((trial / "trial.json").read_text())["run"]["resources"]["deepspeed"] == "zero2"
        assert row["launcher"] == "ray_train"
    assert list(sweep.glob("plots/*.png")), "no plots"
    from emray.cli import main

    assert main(["report", str(sweep)]) == 0 and (sweep / "report.md").exists()  # as the sweep's last line says
    assert list(sweep.rglob("wandb/offline-run-*-summary-*")), "no offline W&B summary run"
    return rows


# In the default run: the one end-to-end test of the real-model spec (about 4-5 min here; docs/cluster.md
# "Rehearsal test" has the measured time). The every-arm version below is make test-slow.
def test_rehearsal_one_arm_every_stage_kind(shared_data, tmp_path, judge_server):
    """interleave_plus: ensemble fine-tunes, pool scores and a selection, then ZeRO-2 over 2 workers,
    generation from vLLM with the trial's adapter, the vLLM judge, the benign fine-tune, plots, report."""
    # The selection is sized for the benign fine-tune's rows, whatever its max_steps: k = 39 at 5 %.
    # 2 steps, not 1: under the spec's warmup_steps 5 the first step's learning rate is 0, so a 1-step
    # adapter is unchanged and the trial fails ("empty adapter"), as it did when this test had 1 step.
    dest = stage_em(shared_data, tmp_path / "shared", pool_rows=48)
    overrides = rehearsal_overrides(
        dest, tmp_path / "out", judge_server.url, "[{interleave_plus: {safe_fraction: 0.05, epsilon: 1.0}}]", steps=2
    )
    overrides += ["eval.generator=vllm", f"eval.vllm.url={judge_server.url}"]
    check_finished(run_sweep(overrides, timeout=600), tmp_path / "out", ["interleave_plus"])


@pytest.mark.slow
def test_rehearsal_every_arm_with_a_vllm_server_per_evaluation(shared_data, tmp_path, judge_server):
    """Every arm type of the spec; each evaluation starts and stops its own vLLM server (no url)."""
    dest = stage_em(shared_data, tmp_path / "shared", pool_rows=128)  # Interleaving++ keeps ~40 % (no refusals)
    overrides = rehearsal_overrides(dest, tmp_path / "out", judge_server.url, ALL_ARMS, steps=2)
    overrides += ["eval.generator=vllm"]
    arms = ["none", "kl", "ldifs", "persona", "inoculation", "interleave", "interleave_plus", "interleave_pp"]
    check_finished(run_sweep(overrides, timeout=3600), tmp_path / "out", arms)
