"""Step time and peak memory of the training-method defenses (not a test).

Each (model, defense) runs in a fresh subprocess (so peak RSS is its own) through the real
``DefendedSFTTrainer.training_step`` + optimizer step, rs-LoRA r=32 on all projections, on a fixed
synthetic batch (``--batch`` rows × ``--seq`` tokens, the first ``--prompt`` tokens of each row
unlabelled). Reported: median step time over ``--steps`` steps after ``--warmup`` and peak memory
(CPU: ``ru_maxrss`` of the subprocess and its rise over the pre-training RSS; CUDA:
``torch.cuda.max_memory_allocated``). Persona steering uses a random vector (extraction is a cached
stage, not a per-step cost); inoculation only rewrites data, so it is the plain step.
``plain`` is TRL's own SFT loss; ``plain-chunked`` is emray's loss path with no extra term (chunked
answer-only CE), which isolates the cost of the reference forward. On CPU the CPU seconds of the
process per step are reported too: on a shared machine they track the work, wall time does not.

    python benchmarks/bench_defenses.py                                  # tiny + smollm2-135m, CPU, 1 thread
    python benchmarks/bench_defenses.py --shape qwen2.5-7b --device cuda # random-init 7B shape on a GPU
    python benchmarks/bench_defenses.py --write benchmarks/RESULTS_defenses.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFENSES = {
    "plain": [],
    "plain-chunked": "ce-only",  # emray's own loss path (chunked CE, no term): isolates the reference forward
    "kl": [{"kl": {"lambda": 0.1}}],
    "ldifs": [{"ldifs": {"lambda": 1.0}}],
    "kl+ldifs": [{"kl": {"lambda": 0.1}}, {"ldifs": {"lambda": 1.0}}],
    "persona": [{"persona": {"alpha": 5.0}}],
    "inoculation": ["inoculation"],
}

# Random-init shapes (no weights needed): the 7B target of the seed paper.
SHAPES = {
    "qwen2.5-7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
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
        tie_word_embeddings=True,
    ),
    "debug": dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,  # smoke-tests --shape
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    ),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load(args):
    import torch

    from emray.config import LoraConfig, ModelConfig
    from emray.models import attach_lora, load_model, load_tokenizer

    if args.shape:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        torch.set_default_dtype(dtype)
        with torch.device(args.device):
            model = Qwen2ForCausalLM(Qwen2Config(**SHAPES[args.shape], attn_implementation="sdpa"))
        torch.set_default_dtype(torch.float32)
        tokenizer = load_tokenizer("tiny")  # only the trainer's processing_class; the batch is synthetic
    else:
        model, tokenizer = load_model(ModelConfig(name=args.model), device=args.device)
    model = attach_lora(model, LoraConfig(r=32, alpha=64))
    return model, tokenizer


def worker(args) -> dict:
    import torch
    from datasets import Dataset
    from safetensors.torch import save_file
    from trl import SFTConfig

    from emray.config import parse_defense_entry
    from emray.defenses import DefenseContext, build_defenses
    from emray.defenses.losses import num_decoder_layers
    from emray.train.sft import DefendedSFTTrainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load(args)
    vocab = model.get_base_model().config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (args.batch, args.seq), generator=gen)
    labels = ids.clone()
    labels[:, : args.prompt] = -100
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}

    tmp = Path(tempfile.mkdtemp())
    hidden = model.get_base_model().config.hidden_size
    vec = torch.randn(num_decoder_layers(model) + 1, hidden, generator=gen)
    save_file({"vectors": vec / vec.norm(dim=-1, keepdim=True)}, str(tmp / "persona.safetensors"))
    if DEFENSES[args.defense] == "ce-only":
        from emray.defenses import Defense

        class CEOnly(Defense):  # a loss defense with no term: DefendedSFTTrainer takes the DefenseBatch path
            name = "ce-only"

            def loss(self, batch):
                return {}

        defenses = [CEOnly()]
    else:
        specs = [parse_defense_entry(e, i) for i, e in enumerate(DEFENSES[args.defense])]
        defenses = build_defenses(
            specs, DefenseContext(tokenizer=tokenizer, artifacts={"persona_vector": tmp / "persona.safetensors"})
        )

    on_gpu = args.device == "cuda"
    sft_args = SFTConfig(
        output_dir=str(tmp / "trainer"),
        per_device_train_batch_size=args.batch,
        learning_rate=1e-5,
        report_to="none",
        use_cpu=not on_gpu,
        bf16=on_gpu,
        max_length=args.seq,
        save_strategy="no",
        gradient_checkpointing=args.gradient_checkpointing,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    dataset = Dataset.from_list(
        [{"input_ids": ids[i].tolist(), "labels": labels[i].tolist()} for i in range(args.batch)]
    )
    trainer = DefendedSFTTrainer(
        model=model, args=sft_args, train_dataset=dataset, processing_class=tokenizer, defenses=defenses
    )
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    for defense in defenses:
        defense.attach(model)

    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = rss_mb()
    times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.training_step(model, inputs)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    import resource

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "model": args.shape or args.model,
        "defense": args.defense,
        "step_s": statistics.median(times),
        "step_min_s": min(times),
        # CPU seconds of this process: on a shared, oversubscribed CPU it tracks the work done far
        # better than wall time (other tenants' load does not add to it). Meaningless on CUDA.
        "cpu_s": statistics.median(cpu_times),
        "step_s_all": [round(t, 4) for t in times],
        "peak_rss_mb": round(peak_rss, 1),
        "rss_rise_mb": round(peak_rss - rss_before, 1),
    }
    if on_gpu:
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_one(args, model: str, defense: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--defense",
        defense,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--prompt",
        str(args.prompt),
    ]
    cmd += ["--shape", model] if model in SHAPES else ["--model", model]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.setdefault("EMRAY_CACHE", str(ROOT / ".emray_cache"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{model}/{defense} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "| model | defense | CPU s/step | × plain | median wall s/step | × plain | min wall s/step | × plain | peak RSS (MB) | RSS rise (MB) | peak GPU (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain = {r["model"]: r for r in rows if r["defense"] == "plain"}
    for r in rows:
        p = plain.get(r["model"])
        ratio = r["step_s"] / p["step_s"] if p else float("nan")
        ratio_min = r["step_min_s"] / p["step_min_s"] if p else float("nan")
        ratio_cpu = r["cpu_s"] / p["cpu_s"] if p else float("nan")
        lines.append(
            f"| {r['model']} | {r['defense']} | {r['cpu_s']:.3f} | {ratio_cpu:.2f} | {r['step_s']:.3f} | {ratio:.2f} | {r['step_min_s']:.3f} | {ratio_min:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_rise_mb']:.0f} | {r.get('peak_gpu_mb', '-')} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    p.add_argument(
        "--shape", choices=sorted(SHAPES), help="benchmark a random-init model of this shape instead of --models"
    )
    p.add_argument(
        "--defenses",
        nargs="+",
        default=["plain", "plain-chunked", "kl", "ldifs", "kl+ldifs", "persona"],
        choices=list(DEFENSES),
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--prompt", type=int, default=64, help="unlabelled prompt tokens per row")
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat the defense sweep, take the median (noisy shared CPUs)"
    )
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--write", help="append a markdown section with the results to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--defense", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    models = [args.shape] if args.shape else args.models
    rows = []
    for model in models:
        by_defense: dict[str, list[dict]] = {}
        for _ in range(args.rounds):  # interleave defenses so load drift hits all of them alike
            for defense in args.defenses:
                r = run_one(args, model, defense)
                print(json.dumps(r), flush=True)
                by_defense.setdefault(defense, []).append(r)
        for runs in by_defense.values():
            best = dict(runs[0])
            best["step_s"] = statistics.median(r["step_s"] for r in runs)
            best["step_min_s"] = min(r["step_min_s"] for r in runs)
            best["cpu_s"] = statistics.median(r["cpu_s"] for r in runs)
            best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            best["rss_rise_mb"] = max(r["rss_rise_mb"] for r in runs)
            rows.append(best)
    md = table(rows)
    print(md)
    if args.write:
        import torch

        cmd = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
        machine = (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch {torch.__version__}"
        )
        if args.device == "cuda":
            machine += f", {torch.cuda.get_device_name()}"
        header = (
            f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n`{cmd}`\n\nMachine: {machine}; "
            f"{args.threads} thread(s); batch {args.batch} × {args.seq} tokens ({args.seq - args.prompt} answer tokens a row); "
            f"rs-LoRA r=32; {args.steps} timed steps after {args.warmup} warm-up per run, {args.rounds} run(s) per row (median of run medians; min over all steps).\n\n"
        )
        with open(args.write, "a") as f:
            f.write(header + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
