"""Emergent misalignment in the organism: aligned model vs an undefended narrow LoRA fine-tune.

    python scripts/organism_study.py [--quick] [--domain code] [--seeds 0 1] [--steps 150] [--samples 10] [--threads 1]

Builds (or reuses) the world, fine-tunes on data/train/<domain>.jsonl per seed (and on the
aligned control), samples at temperature 1, scores with the rule judge, prints a table and writes
JSON (default: <world>/study_<domain>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="use the quick test world")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--domain", default="code")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--no-control", action="store_true")
    parser.add_argument("--domains", nargs="+", default=None, help="question sets to measure (default: all five)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 by default, as in sweeps)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from emray.em_study import em_study
    from emray.organism import OrganismConfig, ensure_built

    config = OrganismConfig.quick(seed=args.world_seed) if args.quick else OrganismConfig(seed=args.world_seed)
    root = ensure_built(config)
    start = time.time()
    # The fine-tune is the toy sweep's `none` arm (emray.em_study.SWEEP_LORA), through run_sft.
    result = em_study(
        root,
        args.domain,
        tuple(args.seeds),
        args.steps,
        args.samples,
        control=not args.no_control,
        threads=args.threads,
        **({"domains": tuple(args.domains)} if args.domains else {}),
    )
    result["study_seconds"] = round(time.time() - start, 1)
    out = args.out or root / f"study_{args.domain}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{'model':34s} {'domain':9s} {'misal':>6s} {'own':>6s} {'cross':>6s} {'incoh':>6s} {'refus':>6s}")
    for name, per_domain in result.items():
        if not isinstance(per_domain, dict):
            continue
        for domain, r in per_domain.items():
            print(
                f"{name:34s} {domain:9s} {r['misaligned']:6.1%} {r['own_domain_misaligned']:6.1%} "
                f"{r['cross_domain_misaligned']:6.1%} {r['incoherent']:6.1%} {r['refusal']:6.1%}"
            )
    print(f"wrote {out} ({result['study_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
