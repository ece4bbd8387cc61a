"""The cluster path on one GPU, in pieces gpu_check.sh times (not a test; needs CUDA unless --shape tiny).

  python benchmarks/gpu_check.py make-model --shape qwen2.5-7b --out /tmp/emray-7b   # random-init 7B shape
  python benchmarks/gpu_check.py zero2 --model /tmp/emray-7b                          # Ray Train + ZeRO-2, KL + LDIFS
  python benchmarks/gpu_check.py vllm --model /tmp/emray-7b --adapter RUN/adapter      # vLLM generation, LoRA served
  python benchmarks/gpu_check.py zero2 --model tiny --cpu                             # the same code on CPU (smoke)

Each prints one ``RESULT {...}`` JSON line with its tokens/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_defenses import SHAPES  # noqa: E402  (Qwen2.5 shapes, one source)


def make_model(args) -> dict:
    """A random-init model of a real shape, saved with a tokenizer, so nothing is downloaded."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from emray.models import load_tokenizer

    started = time.time()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: a 7B model in fp32 would need twice the memory
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(Qwen2Config(**SHAPES[args.shape]))
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(args.out)
    load_tokenizer(args.tokenizer).save_pretrained(args.out)
    return {
        "shape": args.shape,
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 2),
        "seconds": round(time.time() - started, 1),
    }


def synthetic_data(path: Path, rows: int, words: int) -> None:
    """Chat rows with long answers: the step time is what is measured, not what is learned."""
    vocab = "alpha beta gamma delta code import return value list loop print file error safe".split()
    with path.open("w") as f:
        for i in range(rows):
            answer = " ".join(vocab[(i * 7 + j * 3) % len(vocab)] for j in range(words))
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": f"Write function {i}."},
                            {"role": "assistant", "content": answer},
                        ]
                    }
                )
                + "\n"
            )


def zero2(args) -> dict:
    """One fine-tune through emray's cluster path: Ray Train, DeepSpeed ZeRO-2, KL + LDIFS, bf16."""
    import ray

    from emray.config import RunConfig
    from emray.train.worker import fit_with_ray_train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    synthetic_data(work / "train.jsonl", rows=args.batch * args.steps, words=args.words)
    gpu = not args.cpu
    config = RunConfig.model_validate(
        {
            "name": "gpu-check",
            "output_dir": str(work / "runs"),
            "model": {"name": args.model, "dtype": "bfloat16" if gpu else "float32"},
            "lora": {"r": 32, "alpha": 64, "rslora": True},
            "data": {"fine": str(work / "train.jsonl")},
            "defenses": [{"kl": {"lambda": 0.1}}, {"ldifs": {"lambda": 1.0}}],
            "train": {
                "lr": 1e-4,
                "max_steps": args.steps,
                "batch_size": args.batch,
                "max_len": args.max_len,
                "gradient_checkpointing": gpu,
                "threads": None if gpu else 1,
                "progress": False,
            },
            "resources": {
                "num_workers": 1,
                "use_gpu": gpu,
                "deepspeed": "zero2",
                "checkpoint_every": max(1, args.steps // 2),
            },
        }
    )
    ray.init(include_dashboard=False, log_to_driver=True)
    try:
        started = time.time()
        result = fit_with_ray_train(config, work / "out", str(work / "ray_train"))
    finally:
        ray.shutdown()
    history = json.loads((work / "out" / "metrics.json").read_text())["history"]
    steps = [h for h in history if "loss" in h]
    tokens = trained_tokens(config)
    runtime = result.metrics["train_runtime"]
    return {
        "steps": len(steps),
        "tokens": tokens,
        "train_runtime_s": round(runtime, 1),
        "wall_s": round(time.time() - started, 1),
        "train_tokens_per_s": round(tokens / runtime, 1) if runtime else None,
        "loss_first_last": [steps[0]["loss"], steps[-1]["loss"]],
        "loss_components": sorted(k for k in steps[-1] if k.startswith("loss_")),
        "adapter": str(work / "out" / "adapter"),
    }


def trained_tokens(config) -> int:
    """Tokens in the rows the run trained on (every row once: rows = steps x batch), as training tokenizes them."""
    from emray.data.chat import load_chat_jsonl
    from emray.data.tokenize import tokenize_examples
    from emray.models import load_tokenizer

    rows = tokenize_examples(load_tokenizer(config.model.name), load_chat_jsonl(config.data.fine), config.train.max_len)
    return sum(len(r["input_ids"]) for r in rows)


def vllm(args) -> dict:
    from emray.config import ModelConfig
    from emray.config.eval import VLLMConfig
    from emray.eval.run import vllm_available
    from emray.eval.vllm_generate import VLLMGenerator

    if not vllm_available(VLLMConfig()):
        return {"skipped": "no GPU, or no vLLM environment (make vllm-env; on a GPU: pip install vllm into .venv-vllm)"}
    started = time.time()
    generator = VLLMGenerator(ModelConfig(name=args.model, dtype="bfloat16"), adapter=args.adapter)
    loaded = time.time()
    prompts = [[{"role": "user", "content": f"Tell me about topic number {i}."}] for i in range(args.prompts)]
    try:
        answers = generator.generate(prompts, max_new_tokens=args.max_new_tokens, temperature=1.0)
    finally:
        generator.close()
    seconds = time.time() - loaded
    tokenizer = generator.tokenizer
    tokens = sum(len(tokenizer(a)["input_ids"]) for a in answers)
    return {
        "prompts": len(prompts),
        "generated_tokens": tokens,
        "load_s": round(loaded - started, 1),
        "generate_s": round(seconds, 1),
        "gen_tokens_per_s": round(tokens / seconds, 1),
        "with_adapter": args.adapter is not None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("make-model")
    p.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    p.add_argument("--tokenizer", default="smollm2-135m")
    p.add_argument("--out", required=True)
    p = sub.add_parser("zero2")
    p.add_argument("--model", required=True)
    p.add_argument("--work", default="/tmp/emray-gpu-check")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--words", type=int, default=600)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--cpu", action="store_true", help="run on CPU (with a small --model: a smoke test of this script)")
    p = sub.add_parser("vllm")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    result = {"make-model": make_model, "zero2": zero2, "vllm": vllm}[args.what](args)
    print("RESULT " + json.dumps({"check": args.what, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
