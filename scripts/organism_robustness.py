"""Is emergent misalignment in the organism robust to world seed, fine-tune seed and CPU kernels?

    python scripts/organism_robustness.py [--world-seeds 0 1 2 3 4] [--seeds 0 1 2] [--samples 4]
        [--settings native avx2 default threads2] [--out robustness.json]

For each setting and world seed, runs ``scripts/organism_study.py`` in a fresh process (the kernel choice
is fixed when torch loads): the undefended narrow code fine-tune (the toy sweep's `none` arm, through
run_sft) per fine-tune seed, and the aligned model. Settings:
  native   the CPU's own kernels (AVX-512 where it has them), 1 torch thread
  avx2     ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: what an AVX2-only CPU computes
  default  ATEN_CPU_CAPABILITY=default: ATen's non-vectorised kernels
  threads2 native kernels, 2 torch threads (other reduction orders)
Worlds are built (or taken from the cache / the shipped default) before the fine-tunes; a world built
under another setting is reused as it is, so a setting changes the fine-tune and sampling, not the world.
Prints the min / median / max over the world x fine-tune seed runs per setting, with each run's
Wilson 95 % interval.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emray.eval.criteria import wilson_interval

SETTINGS = {
    "native": ({}, 1),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 1),
    "default": ({"ATEN_CPU_CAPABILITY": "default"}, 1),
    "threads2": ({}, 2),
}
STUDY = Path(__file__).with_name("organism_study.py")


def run_setting(setting: str, world_seed: int, seeds: list[int], samples: int) -> dict:
    env_extra, threads = SETTINGS[setting]
    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study.json"
        cmd = [
            sys.executable,
            str(STUDY),
            "--world-seed",
            str(world_seed),
            "--seeds",
            *map(str, seeds),
            "--samples",
            str(samples),
            "--no-control",
            "--domains",
            "general",
            "code",
            "--threads",
            str(threads),
            "--out",
            str(out),
        ]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def summarize(runs: list[dict]) -> dict:
    general = [r["general"] for r in runs]
    code = [r["code"] for r in runs]
    return {
        "runs": len(runs),
        "general_misaligned": [min(general), statistics.median(general), max(general)],
        "code_misaligned": [min(code), statistics.median(code), max(code)],
        "general_incoherent": [
            min(r["incoherent"] for r in runs),
            statistics.median(r["incoherent"] for r in runs),
            max(r["incoherent"] for r in runs),
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("organism_robustness.json"))
    args = parser.parse_args(argv)

    result = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    done = {(r["setting"], r["world_seed"], r["seed"]) for r in result["runs"]}
    new_rows: list[dict] = []
    for setting in args.settings:
        for world_seed in args.world_seeds:
            seeds = [s for s in args.seeds if (setting, world_seed, s) not in done]
            if not seeds:
                continue
            start = time.time()
            study = run_setting(setting, world_seed, seeds, args.samples)
            for seed in seeds:
                run = study[f"finetune_code_seed{seed}"]
                g, c = run["general"], run["code"]
                row = {
                    "setting": setting,
                    "world_seed": world_seed,
                    "seed": seed,
                    "cpu_capability": study["cpu_capability"],
                    "general": g["misaligned"],
                    "general_n": g["n"],
                    "code": c["misaligned"],
                    "code_n": c["n"],
                    "incoherent": g["incoherent"],
                    "aligned_general": study["aligned_model"]["general"]["misaligned"],
                }
                result["runs"].append(row)
                new_rows.append(row)
                # the study's rates are over all n answers, so k = rate * n exactly
                lo, hi = wilson_interval(round(g["misaligned"] * g["n"]), g["n"])
                print(
                    f"{setting:8s} world {world_seed} seed {seed} ({study['cpu_capability']}): general EM "
                    f"{g['misaligned']:.1%} [{lo:.1%}, {hi:.1%}] of {g['n']}, code {c['misaligned']:.1%}, "
                    f"incoherent {g['incoherent']:.1%}",
                    flush=True,
                )
            print(f"  ({time.time() - start:.0f} s)", flush=True)
            # resumable (a re-run skips finished runs); merged with what other runs wrote meanwhile
            on_disk = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
            have = {(r["setting"], r["world_seed"], r["seed"]) for r in on_disk["runs"]}
            result = {
                "runs": on_disk["runs"]
                + [r for r in new_rows if (r["setting"], r["world_seed"], r["seed"]) not in have]
            }
            args.out.write_text(json.dumps(result, indent=2))
            new_rows = []
    print(
        "\n| setting | runs | general EM min / median / max | code misalignment min / median / max | general incoherent min / median / max |"
    )
    print("|---|---|---|---|---|")
    for setting in args.settings:
        unique = {(r["world_seed"], r["seed"]): r for r in reversed(result["runs"]) if r["setting"] == setting}
        runs = list(unique.values())  # the first row of each (world seed, seed)
        if runs:
            s = summarize(runs)
            fmt = lambda t: " / ".join(f"{v:.1%}" for v in t)  # noqa: E731
            print(
                f"| {setting} | {s['runs']} | {fmt(s['general_misaligned'])} | {fmt(s['code_misaligned'])} | {fmt(s['general_incoherent'])} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
