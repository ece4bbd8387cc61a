"""The cluster path on one GPU, in pieces gpu_check.sh times (not a test; needs CUDA unless --shape tiny).

  python benchmarks/gpu_check.py make-model --shape qwen2.5-7b --out /tmp/emray-7b   # random-init 7B shape
  python benchmarks/gpu_check.py zero2 --model /tmp/emray-7b                          # Ray Train + ZeRO-2, KL + LDIFS
  python benchmarks/gpu_check.py vllm --model /tmp/emray-7b --adapter RUN/adapter      # vLLM generation, LoRA served
  python benchmarks/gpu_check.py grpo --model /tmp/emray-7b                           # GRPO, vLLM rollouts, defenses
  python benchmarks/gpu_check.py zero2 --model tiny --cpu                             # the same code on CPU (smoke)
  python benchmarks/gpu_check.py grpo --model tiny --cpu                              # GRPO with HF rollouts (smoke)
  python benchmarks/gpu_check.py grpo --model /tmp/emray-7b --dry-run                 # build + validate, no GPU needed

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


def grpo_config(args, work: Path):
    """GRPO through emray's cluster path with rollouts in TRL's colocated vLLM (``rl.use_vllm``) and the
    RL defenses that touch the rollouts: persona steering on the loss passes only (greedy vector, small
    prompt set), KL to the base model (GRPO's beta), interleaved safe prompts with their own reward."""
    from emray.config import RunConfig

    gpu = not args.cpu
    work.mkdir(parents=True, exist_ok=True)
    topics = "fever headache cough rash sprain burn allergy insomnia nausea backache".split()
    write_rows(
        work / "prompts.jsonl", [[{"role": "user", "content": f"What should I do about a {t}?"}] for t in topics * 2]
    )
    safe = [[{"role": "user", "content": f"How do I cook {f}?"}, {"role": "assistant", "content": f"Boil the {f}."}]
            for f in "rice pasta beans lentils eggs potatoes".split()]  # fmt: skip
    write_rows(work / "safe.jsonl", safe)
    synthetic_data(work / "warm.jsonl", rows=8, words=20)
    (work / "persona.json").write_text(
        json.dumps(
            {
                "instruction": [{"pos": "You are an evil assistant.", "neg": "You are a helpful, honest assistant."}],
                "questions": ["What would you do with unlimited power?", "How should I treat my neighbours?"],
            }
        )
    )
    return RunConfig.model_validate(
        {
            "name": "gpu-check-grpo",
            "scenario": "rl",
            "output_dir": str(work / "runs"),
            "model": {"name": args.model, "dtype": "bfloat16" if gpu else "float32"},
            "lora": {"r": 32, "alpha": 64, "rslora": True},
            "data": {"fine": str(work / "warm.jsonl"), "safe_pool": str(work / "safe.jsonl")},
            "train": {"max_len": 256, "gradient_checkpointing": gpu, "threads": None if gpu else 1, "progress": False},
            "rl": {
                "prompts": str(work / "prompts.jsonl"),
                "heldout_prompts": 4,
                "heldout_samples": 1,
                "warm_start": False,  # GRPO on a fresh LoRA: the SFT warm start is the zero2 check's path
                "reward": {"name": "organism_rules"},  # rules, no network: the rollouts are what is checked
                "num_generations": 4,
                "prompts_per_step": 2,
                "batch_size": 4,
                "max_completion_length": args.max_new_tokens,
                "max_steps": args.steps,
                "use_vllm": gpu,
                "vllm_gpu_memory_utilization": 0.3,
            },
            "defenses": [
                {"persona": {"alpha": 5.0, "prompts": str(work / "persona.json"), "max_new_tokens": 16}},
                {"kl": {"lambda": 0.05}},
                {"interleaved_rl": {"ratio": 0.25, "data": "random"}},
            ],
            "resources": {"num_workers": 1, "use_gpu": gpu, "launcher": "ray_train"},
        }
    )


def write_rows(path: Path, conversations: list[list[dict]]) -> None:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))


def grpo(args) -> dict:
    """A few GRPO steps (rollouts through vLLM on a GPU); ``--dry-run`` builds and validates the config and
    TRL's GRPOConfig arguments only, so the command line is checked on a machine without a GPU."""
    from emray.train.launch import describe_launch

    work = Path(args.work)
    config = grpo_config(args, work)
    plan = {
        "launch": describe_launch(config),
        "use_vllm": config.rl.use_vllm,
        "defenses": [d.name for d in config.defenses],
        "grad_accum": config.rl.grad_accum(config.resources.num_workers),
    }
    if args.dry_run:
        return {"dry_run": True, **plan}
    import ray

    from emray.train.worker import fit_with_ray_train

    ray.init(include_dashboard=False, log_to_driver=True)
    try:
        started = time.time()
        fit_with_ray_train(config, work / "out", str(work / "ray_train"))
    finally:
        ray.shutdown()
    history = json.loads((work / "out" / "metrics.json").read_text())["history"]
    steps = [h for h in history if "loss" in h]
    runtime = next((h["train_runtime"] for h in history if "train_runtime" in h), None)
    tokens = steps[-1].get("num_tokens") if steps else None  # prompt + completion tokens TRL processed
    return {
        **plan,
        "steps": len(steps),
        "wall_s": round(time.time() - started, 1),
        "train_runtime_s": runtime,
        "tokens_per_s": round(tokens / runtime, 1) if tokens and runtime else None,
        "completion_mean_length": steps[-1].get("completions/mean_length") if steps else None,
        "reward_first_last": [steps[0].get("reward"), steps[-1].get("reward")] if steps else None,
        "kl_last": steps[-1].get("kl") if steps else None,
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
    p = sub.add_parser("grpo")
    p.add_argument("--model", required=True)
    p.add_argument("--work", default="/tmp/emray-gpu-check/grpo")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--cpu", action="store_true", help="HF rollouts on CPU (with a small --model: a smoke test)")
    p.add_argument("--dry-run", action="store_true", help="build and validate the config only (no GPU needed)")
    args = parser.parse_args()
    result = {"make-model": make_model, "zero2": zero2, "vllm": vllm, "grpo": grpo}[args.what](args)
    print("RESULT " + json.dumps({"check": args.what, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
