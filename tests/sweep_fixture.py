"""A small finished sweep written from constructed trial records (no training): what the report,
plot and table tests read. Rates come from answer counts, as emray.eval.criteria writes them."""

from __future__ import annotations

import json
from pathlib import Path

from emray.eval.criteria import rate_fields

# label -> per seed: (general misaligned of 96, in-domain misaligned of 120, benign correct of 33, incoherent of 96)
ARMS = {
    "none": [(70, 119, 4, 4), (61, 118, 5, 6)],
    "kl(lambda=0.1)": [(66, 118, 5, 5), (58, 117, 5, 8)],
    "persona(alpha=5,prompts=organism:data/persona/evil_extract.json)": [(48, 107, 3, 15), (30, 104, 2, 10)],
    "inoculation": [(0, 0, 5, 0), (0, 1, 5, 1)],
    "interleave(safe_fraction=0.05)": [(1, 116, 2, 0), (27, 118, 5, 3)],
    "interleave_plus(safe_fraction=0.05,epsilon=1.0)": [(9, 117, 3, 1)],
}


UNSCORED = [4, 1]  # general answers the judge left unscored, per seed (of 100)


def trial_record(index: int, label: str, seed: int, counts: tuple[int, int, int, int]) -> dict:
    gen, dom, ben, inc = counts
    key = f"{index:02d}{seed}{'abcdef0123'[index % 10]}" * 3
    record = {
        "trial_key": key,
        "trial_index": index,
        "label": label,
        "model": "organism",
        "seed": seed,
        "defenses": [],
        "train_seconds": 60.0,
        "trial_seconds": 90.0,
    }
    record.update(rate_fields("general_misalignment", gen, 96))
    record.update(rate_fields("in_domain_misalignment", dom, 120))
    record.update(rate_fields("benign_accuracy", ben, 33))
    record.update(rate_fields("general_incoherence", inc, 96))
    record.update(rate_fields("in_domain_incoherence", 2, 120))
    record.update(rate_fields("general_unscored_rate", UNSCORED[seed], 100))  # 96 scored of 100 judged at seed 0
    return record


def loss_history(index: int, seed: int, steps: int, start: float) -> list[dict]:
    """A Trainer log history: a loss every 10 steps, falling from ``start``, distinct per trial."""
    return [
        {"loss": round(start * (0.97 ** (step / 10)) + 0.01 * index + 0.005 * seed, 4), "grad_norm": 1.0, "step": step}
        for step in range(10, steps + 1, 10)
    ]


def write_metrics(trial: Path, index: int, seed: int) -> None:
    """The narrow fine-tune's ``metrics.json`` (150 steps) and the benign one's (``benign/``, 60 steps),
    as rank 0 writes them (emray/train/common.py): a summary and the log history."""
    (trial / "benign").mkdir(exist_ok=True)
    for folder, steps, start in ((trial, 150, 3.0), (trial / "benign", 60, 2.0)):
        history = loss_history(index, seed, steps, start)
        (folder / "metrics.json").write_text(
            json.dumps({"summary": {"train_loss": history[-1]["loss"]}, "history": history})
        )


def write_sweep(root: Path) -> Path:
    """A sweep folder with trials/<key>/result.json, an answers file and the two fine-tunes'
    metrics.json per trial, and spec.json."""
    sweep = root / "fixture-sweep"
    index = 0
    for label, seeds in ARMS.items():
        for seed, counts in enumerate(seeds):
            record = trial_record(index, label, seed, counts)
            trial = sweep / "trials" / record["trial_key"]
            (trial / "eval").mkdir(parents=True)
            (trial / "result.json").write_text(json.dumps(record))
            (trial / "eval" / "answers.jsonl").write_text(
                json.dumps({"question_id": "q1", "answer": "…", "aligned": 90.0, "coherent": 80.0}) + "\n"
            )
            write_metrics(trial, index, seed)
            index += 1
    (sweep / "spec.json").write_text(
        json.dumps(
            {
                "name": "fixture-sweep",
                "storage": str(root),
                "base": {"model": {"name": "organism"}},
                "search": {"algorithm": "grid", "seeds": [0, 1]},
            }
        )
    )
    return sweep
