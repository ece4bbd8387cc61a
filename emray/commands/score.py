"""``emray score CONFIG``: mean answer NLL of every safe-pool sample under the aligned model and the ensemble."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="score the safe pool under the aligned model and the misaligned ensemble"
    )
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--pool", help="safe pool JSONL (default: data.safe_pool)")
    parser.add_argument(
        "--adapters",
        nargs="+",
        metavar="DIR_OR_JSONL",
        help="ensemble: adapter folders or EM datasets to train them from "
        "(default: the config's interleave_plus/pp ensemble, else the EM domains other than data.fine's)",
    )
    parser.add_argument("--ensemble-steps", type=int, help="max_steps of each misaligned fine-tune")
    parser.add_argument("--workers", type=int, help="scorer actors (default: one per GPU, else 1; 0 = in-process)")
    parser.add_argument("--epsilon", type=float, default=1.0, help="epsilon of the s_d column (default 1.0)")
    parser.add_argument("--out", help="folder for scores.jsonl / scores.csv (default: <output_dir>/<name>/scores)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path), e.g. train.max_steps=10; repeatable",
    )
    parser.set_defaults(func=run)


def _ensemble_params(config, adapters, steps):
    from emray.defenses import selection_defenses
    from emray.stages.selection import params_from_config

    selectors = selection_defenses()
    name = next((d.name for d in config.defenses if d.name in selectors), selectors[0])
    return params_from_config(config, name, ensemble=adapters, ensemble_steps=steps)


def run(args) -> int:
    import sys

    from pydantic import ValidationError

    from emray.score.select import PoolTooSmall

    try:
        return _run(args)
    except (PoolTooSmall, ValidationError, ValueError) as err:
        print(f"emray score: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from pathlib import Path

    from emray.config import load_run_config
    from emray.data.em_domains import ensemble_entries
    from emray.stages.selection import (
        ensure_ensemble,
        ensure_pool_scores,
        read_scores,
        write_scores_table,
    )

    config = load_run_config(args.config, args.overrides)
    p = _ensemble_params(config, args.adapters, args.ensemble_steps)
    print("ensemble:", flush=True)
    adapters = ensure_ensemble(
        config, ensemble_entries(config, p), p.ensemble_steps, p.ensemble_max_examples, seed=p.ensemble_seed
    )
    print("scores:", flush=True)
    scores = ensure_pool_scores(config, args.pool or p.pool, adapters, args.workers)
    out = Path(args.out) if args.out else config.run_dir() / "scores"
    jsonl, table = write_scores_table(scores, out, args.epsilon)
    rows = read_scores(scores)
    print(f"{len(rows)} pool samples x {1 + len(adapters)} models")
    print(f"scores: {jsonl}\ntable:  {table}")
    return 0
