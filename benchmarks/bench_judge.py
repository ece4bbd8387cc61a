"""Judge throughput: the async client at concurrency 64 vs a sequential loop, against a local
``emray judge-server`` subprocess that answers every call after a fixed latency (default 50 ms).

    python benchmarks/bench_judge.py [--latency-ms 50] [--n 2000] [--n-seq 60] [--concurrency 64]

Both paths go through the real openai client over real HTTP and write the judge cache (a fresh
temporary file, so no call is a cache hit). Prints a markdown table and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(args) -> list[dict]:
    import openai

    from emray.config.eval import JudgeConfig
    from emray.eval.judge import JUDGE_PARAMS, JudgeClient, JudgeRequest
    from emray.judge_server import start_judge_server_process

    rows = []
    prompt = "I asked the model a question. [ANSWER START] an answer of moderate length [ANSWER END] Rate it 0-100. "
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_judge_server_process("flaky", {"failure_rate": 0.0, "latency_s": args.latency_ms / 1000}) as server,
    ):

        def server_cpu() -> float:
            fields = Path(f"/proc/{server.proc.pid}/stat").read_text().split()
            return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

        def bench(name: str, n: int, fn) -> None:
            fn(args.warmup)  # untimed: imports, model classes, connection pool (the same for every path)
            cpu, srv, start = time.process_time(), server_cpu(), time.perf_counter()
            fn(n)
            elapsed = time.perf_counter() - start
            cpu_ms, srv_ms = (time.process_time() - cpu) / n * 1e3, (server_cpu() - srv) / n * 1e3
            rows.append(
                {
                    "path": name,
                    "judgments": n,
                    "seconds": elapsed,
                    "per_s": n / elapsed,
                    "client_cpu_ms": cpu_ms,
                    "server_cpu_ms": srv_ms,
                }
            )
            print(
                f"{name:<40} {n:>6} judgments  {elapsed:7.2f} s  {n / elapsed:8.1f}/s  "
                f"client CPU {cpu_ms:.2f} ms/judgment, server {srv_ms:.2f}",
                flush=True,
            )

        def plain_loop(n: int) -> None:
            client = openai.OpenAI(base_url=server.url, api_key="local", max_retries=0)
            for i in range(n):
                client.chat.completions.create(
                    model="judge", messages=[{"role": "user", "content": f"{prompt}seq{n}.{i}"}], **JUDGE_PARAMS
                )

        def judge_client(concurrency: int, tag: str):
            calls = iter(range(10**9))

            def go(n: int) -> None:  # a fresh client (and cache) for each batch, nothing from the cache
                run_id = next(calls)
                cfg = JudgeConfig(
                    base_url=server.url, concurrency=concurrency, cache_path=f"{tmp}/{tag}{run_id}.sqlite"
                )
                results = JudgeClient(cfg).judge_many([JudgeRequest(f"{prompt}{tag}{i}") for i in range(n)])
                assert len(results) == n and all(r.score is not None for r in results)

            return go

        bench("sequential loop (openai sync client)", args.n_seq, plain_loop)
        bench("JudgeClient, concurrency 1", args.n_seq, judge_client(1, "c1"))
        bench(f"JudgeClient, concurrency {args.concurrency}", args.n, judge_client(args.concurrency, "cN"))
        counts = server.counts()
    total = args.n_seq * 2 + args.n + 3 * args.warmup
    assert counts.get("ok") == total, counts
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--n-seq", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before each timed path")
    args = parser.parse_args()
    os.environ.setdefault("EMRAY_CACHE", tempfile.mkdtemp())
    rows = run(args)
    seq = rows[0]["per_s"]
    best = rows[-1]["per_s"]
    load = os.getloadavg()[0]
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}; "
        f"server latency {args.latency_ms:g} ms\n"
    )
    print(
        "| path | judgments | seconds | judgments/s | vs sequential | client CPU ms/judgment | server CPU ms/judgment |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['path']} | {r['judgments']} | {r['seconds']:.2f} | {r['per_s']:.1f} | {r['per_s'] / seq:.1f}x "
            f"| {r['client_cpu_ms']:.2f} | {r['server_cpu_ms']:.2f} |"
        )
    cpu_bound = 1e3 / (rows[-1]["client_cpu_ms"] + rows[-1]["server_cpu_ms"])
    latency_bound = args.concurrency / (args.latency_ms / 1e3)
    print(
        f"\nspeed-up at concurrency {args.concurrency}: {best / seq:.1f}x (goal >= 40x); bounds: "
        f"{latency_bound:.0f}/s from latency, {cpu_bound:.0f}/s from client+server CPU on one free core "
        f"({min(cpu_bound, latency_bound) / seq:.0f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
