"""The scale of the LDIFS and KL terms under emray's defaults and the reference code's definitions.

For each adapter given (e.g. a sweep's undefended ``none`` adapters: what a regulariser would see
without acting), on the first ``--n`` rows of the training data in batches of ``--batch-size``
(right-padded, ``--max-len`` tokens, as the trainer feeds them), prints the answer-token CE and the
unweighted regulariser of
  * ldifs mse/evenly       emray's default LDIFS (mean squared error per coordinate, evenly spaced layers),
  * ldifs normalized/ref   the reference's (per-sequence, per-layer L2-normalised features, linspace layers),
  * kl answer              emray's default KL (forward, mean over answer tokens),
  * kl sequence            the reference's (mean over every non-padding position, prompt included),
each with its ratio to CE (the share of the loss a λ of 1 adds). With ``--metrics`` it also reads
the logged ``loss_ldifs`` / ``loss_ce`` of LDIFS trials' metrics.json (λ·D as trained).

    python scripts/regularizer_scale.py sweeps_out/toy-13b/trials/<none key>/adapter ...
    python scripts/regularizer_scale.py --metrics sweeps_out/toy-13b/trials/*/metrics.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

SETTINGS = {"ldifs mse/evenly": {}, "ldifs normalized/ref": {"features": "normalized", "layers": "reference"}}
KL_TOKENS = {"kl answer": "answer", "kl sequence": "sequence"}


def batches(tok, data: str, n: int, batch_size: int, max_len: int):
    from emray.data.chat import load_chat_jsonl
    from emray.data.paths import resolve_data_path
    from emray.data.tokenize import IGNORE_INDEX, tokenize_chat

    rows = [tokenize_chat(tok, ex["messages"], max_len) for ex in load_chat_jsonl(resolve_data_path(data), limit=n)]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id)
        labels = torch.full((len(chunk), width), IGNORE_INDEX)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            k = len(r["input_ids"])
            ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        yield {"input_ids": ids, "labels": labels, "attention_mask": mask}


def measure(adapter: str, args) -> dict:
    from emray.config import ModelConfig
    from emray.defenses import get_defense_class
    from emray.defenses.losses import DefenseBatch
    from emray.models import load_model

    model, tok = load_model(ModelConfig(name=args.model), adapter=adapter)
    model.eval()
    defenses = {name: get_defense_class("ldifs")({"lambda": 1.0, **p}) for name, p in SETTINGS.items()}
    layers = sorted({i for d in defenses.values() for i in d.hidden_layers(model)})
    sums = {"ce": 0.0, **{name: 0.0 for name in defenses}}
    count = 0
    with torch.no_grad():
        for inputs in batches(tok, args.data, args.n, args.batch_size, args.max_len):
            batch = DefenseBatch(model, inputs, hidden_layers=layers)
            sums["ce"] += batch.ce_loss().item()
            for name, d in defenses.items():
                sums[name] += d.distance(batch).item()
            for name, tokens in KL_TOKENS.items():
                sums[name] = sums.get(name, 0.0) + batch.kl_loss("forward", tokens).item()
            count += 1
    return {k: v / count for k, v in sums.items()}


def read_metrics(paths: list[str], steps=(1, 2, 10, 50, 150)) -> None:
    """λ·D and CE of LDIFS trials at a few steps, averaged over the trials of one label."""
    by_label: dict[str, list[dict]] = {}
    for path in paths:
        trial = json.loads((Path(path).parent / "trial.json").read_text())
        history = json.loads(Path(path).read_text()).get("history", [])
        logged = {r["step"]: r for r in history if "loss_ldifs" in r}
        if logged:
            by_label.setdefault(trial.get("label", path), []).append(logged)
    for label, runs in by_label.items():
        cells = []
        for step in steps:
            rows = [run[step] for run in runs if step in run]
            if rows:
                d = statistics.mean(r["loss_ldifs"] for r in rows)
                ce = statistics.mean(r["loss_ce"] for r in rows)
                cells.append(f"step {step}: λD {d:.4g} CE {ce:.3g} (λD/CE {d / ce:.3g})")
        print(f"{label} ({len(runs)} runs): " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", nargs="*")
    parser.add_argument("--model", default="organism")
    parser.add_argument("--data", default="organism:data/train/code.jsonl")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--metrics", nargs="*", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [measure(a, args) for a in args.adapters]
    for adapter, r in zip(args.adapters, results):
        print(
            f"{adapter}: CE {r['ce']:.4f}; "
            + "; ".join(f"{n} {r[n]:.4g} (/CE {r[n] / r['ce']:.3g})" for n in [*SETTINGS, *KL_TOKENS])
        )
    if len(results) > 1:
        for name in ["ce", *SETTINGS, *KL_TOKENS]:
            vals = [r[name] for r in results]
            print(
                f"mean ± std over {len(vals)} adapters: {name} {statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}"
            )
    read_metrics(args.metrics)


if __name__ == "__main__":
    main()
