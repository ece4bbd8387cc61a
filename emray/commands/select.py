"""``emray select CONFIG --method NAME``: pick the safe samples to interleave (a selection defense's stage)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("select", help="select safe data for Interleaving+ / Interleaving++ (cached)")
    parser.add_argument("config", help="run config YAML")
    from emray.defenses import selection_defenses

    parser.add_argument(
        "--method",
        required=True,
        choices=selection_defenses(),
        help="a selection defense: Interleaving+ (loss-gap selection), Interleaving++ (the same without refusals)",
    )
    parser.add_argument("--fraction", type=float, help="safe_fraction (share of safe samples in the mixed set)")
    parser.add_argument("--epsilon", type=float, help="epsilon of s_d")
    parser.add_argument("--quantile", type=float, help="draw from this top share of the pool (default 0.05)")
    parser.add_argument("--top-k", action="store_true", help="the strict top k instead of a draw from the top quantile")
    parser.add_argument("--pool", help="safe pool JSONL (default: the defense's pool, else data.safe_pool)")
    parser.add_argument(
        "--adapters",
        nargs="+",
        metavar="DIR_OR_JSONL",
        help="ensemble: adapter folders or EM datasets to train them from "
        "(default: the EM domains other than data.fine's)",
    )
    parser.add_argument("--ensemble-steps", type=int, help="max_steps of each misaligned fine-tune")
    parser.add_argument("--workers", type=int, help="scorer actors (default: one per GPU, else 1; 0 = in-process)")
    parser.add_argument("--out", help="also copy selected.jsonl and summary.json to this folder")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path), e.g. train.max_steps=10; repeatable",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys

    from pydantic import ValidationError

    from emray.score.select import PoolTooSmall

    try:
        return _run(args)
    except (PoolTooSmall, ValidationError, ValueError) as err:
        print(f"emray select: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import shutil
    from pathlib import Path

    from emray.config import load_run_config
    from emray.score.select import read_summary
    from emray.stages.selection import (
        ensure_selection,
        format_summary,
        params_from_config,
    )

    config = load_run_config(args.config, args.overrides)
    params = params_from_config(
        config,
        args.method,
        safe_fraction=args.fraction,
        epsilon=args.epsilon,
        pool=args.pool,
        ensemble=args.adapters,
        ensemble_steps=args.ensemble_steps,
        quantile=args.quantile,
    )
    if args.top_k:
        params = params.model_copy(update={"quantile": None})
    print(f"selecting safe data for {args.method}:", flush=True)
    selected = ensure_selection(config, args.method, params, workers=args.workers)
    print(format_summary(read_summary(selected)))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for f in (selected, selected.parent / "summary.json"):
            shutil.copy(f, out / f.name)
        selected = out / selected.name
    print(f"selected: {selected}")
    return 0
