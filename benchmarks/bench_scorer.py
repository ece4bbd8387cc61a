"""Scorer throughput: emray's batched answer NLL vs a straightforward per-sample loop, same model and data.

  python benchmarks/bench_scorer.py --model tiny --samples 64
  python benchmarks/bench_scorer.py --model smollm2-135m --samples 64 --loop-samples 16
  python benchmarks/bench_scorer.py --shape qwen2.5-7b --device cuda --samples 256   # random-init 7B shape

Three ways to compute the same numbers (tokens/s counts every input token, prompt and answer):
  loop     one sample at a time, full logits, float32 log_softmax, gather the answer tokens;
  batched  sorted length buckets, HF forward with full logits, log_softmax (the usual batched code);
  emray    sorted length buckets, decoder only, lm_head + cross-entropy on answer positions in chunks.
Also prints the largest |difference| between the loop's and emray's NLLs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POOL = ROOT.parent / "shared" / "data" / "em" / "safe" / "wildguard_sample.jsonl"

SHAPES = {
    # Qwen2.5-7B-Instruct's config, random weights (no download): what matters for speed is the shape.
    "qwen2.5-7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
    ),
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
}


def load(args):
    import torch

    from emray.config import ModelConfig
    from emray.models import load_model, load_tokenizer

    if args.shape:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(**SHAPES[args.shape], attn_implementation=args.attn)
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, args.dtype))  # build in the target dtype: no fp32 copy of 7B
        try:
            with torch.device(args.device):
                model = Qwen2ForCausalLM(config)
        finally:
            torch.set_default_dtype(default)
        # Real chat token lengths from a real tokenizer; the random model accepts any id < vocab.
        return model.eval(), load_tokenizer(args.tokenizer)
    model, tokenizer = load_model(
        ModelConfig(name=args.model, dtype=args.dtype, attn_implementation=args.attn), device=args.device
    )
    return model.eval(), tokenizer


def batched_full_logits(model, rows, pad_id, token_budget, max_batch):
    """The usual batched scorer: sorted buckets, full logits, log_softmax over the whole batch."""
    import torch

    from emray.data.tokenize import IGNORE_INDEX
    from emray.score.nll import _pad, length_buckets

    out = [math.nan] * len(rows)
    with torch.inference_mode():
        for batch in length_buckets([len(r["input_ids"]) for r in rows], token_budget, max_batch):
            ids, labels, mask, pos = _pad([rows[i] for i in batch], pad_id, "right", model.device)
            logp = torch.log_softmax(
                model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].float(), -1
            )
            tgt = labels[:, 1:]
            keep = tgt != IGNORE_INDEX
            nll = -logp.gather(2, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
            for b, i in enumerate(batch):
                out[i] = (nll[b].sum() / keep[b].sum()).item()
    return out


def timed(fn, device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="emray model name (tiny, smollm2-135m, hub id)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random-init model of this shape instead of --model")
    parser.add_argument("--tokenizer", default="smollm2-135m", help="tokenizer for --shape (real token lengths)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--pool", default=str(DEFAULT_POOL))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--loop-samples", type=int, help="time the loop on the first N samples only (default: all)")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument(
        "--token-budget", type=int, default=None, help="default: emray's per device (1024 CPU, 65536 CUDA)"
    )
    parser.add_argument("--max-batch", type=int, default=None, help="default: emray's per device (64 CPU, 256 CUDA)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; best time counts")
    parser.add_argument("--skip", default="", help="comma list of methods to skip (loop,batched,emray)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    from emray.score.nll import default_batching

    budget, batch = default_batching(args.device)
    args.token_budget, args.max_batch = args.token_budget or budget, args.max_batch or batch

    import torch

    torch.set_num_threads(args.threads)
    from emray.data.chat import load_safe_pool
    from emray.score.nll import loop_answer_nll, score_rows, tokenize_pool

    model, tokenizer = load(args)
    rows = tokenize_pool(tokenizer, load_safe_pool(args.pool)[: args.samples], args.max_len)
    pad = tokenizer.pad_token_id
    skip = set(filter(None, args.skip.split(",")))
    # Warm up (allocator, kernels) on a few samples.
    score_rows(model, rows[:4], pad, args.token_budget, args.max_batch)
    loop_answer_nll(model, rows[:2])

    # Methods run interleaved, --repeat times; the best time of each counts (the machine is shared).
    methods = {
        "emray": (rows, lambda: score_rows(model, rows, pad, args.token_budget, args.max_batch)),
        # The usual batched code, as in the H200 anchor: sorted batches of (at most) 64.
        "batched": (rows, lambda: batched_full_logits(model, rows, pad, args.token_budget, min(args.max_batch, 64))),
        "loop": (
            rows[: args.loop_samples or len(rows)],
            lambda: loop_answer_nll(model, rows[: args.loop_samples or len(rows)]),
        ),
    }
    results, outputs = {}, {}
    for _ in range(args.repeat):
        for name, (used, fn) in methods.items():
            if name in skip:
                continue
            try:
                outputs[name], sec = timed(fn, args.device)
            except torch.OutOfMemoryError:
                print(f"  {name}: out of memory (full logits); skipped", flush=True)
                skip.add(name)
                torch.cuda.empty_cache()
                continue
            tokens = sum(len(r["input_ids"]) for r in used)
            if name not in results or sec < results[name][1]:
                results[name] = (tokens, sec)
    if "loop" in outputs and "emray" in outputs:
        pairs = [(a, b) for a, b in zip(outputs["loop"], outputs["emray"]) if not (math.isnan(a) or math.isnan(b))]
        results["max_abs_diff"] = max(abs(a - b) for a, b in pairs)

    lengths = [len(r["input_ids"]) for r in rows]
    what = f"--shape {args.shape}" if args.shape else f"--model {args.model}"
    print(
        f"{what} device={args.device} dtype={args.dtype} threads={args.threads} samples={len(rows)} "
        f"tokens={sum(lengths)} (mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}) "
        f"token_budget={args.token_budget} max_batch={args.max_batch}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else "")
    )
    loop_tps = results["loop"][0] / results["loop"][1] if "loop" in results else None
    table = {}
    for name in ("loop", "batched", "emray"):
        if name in results:
            tokens, sec = results[name]
            tps = tokens / sec
            table[name] = tps
            speedup = f"{tps / loop_tps:5.1f}x" if loop_tps else "   - "
            print(f"  {name:8s} {tokens:8d} tok in {sec:8.2f} s  {tps:10.0f} tok/s  {speedup} vs loop")
    if "max_abs_diff" in results:
        print(f"  max |NLL loop - NLL emray| = {results['max_abs_diff']:.2e}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "tok_per_s": table, **{k: v for k, v in results.items() if k == "max_abs_diff"}},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
