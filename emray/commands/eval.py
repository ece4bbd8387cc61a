"""``emray eval CONFIG [--adapter DIR]``: generate, judge and score one model on the four criteria."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="generate answers, judge them and report the four criteria")
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--adapter", help="LoRA adapter folder to evaluate on top of the base model")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path), e.g. train.max_steps=10; repeatable",
    )
    parser.add_argument("--out", help="output folder (default: <output_dir>/<name>/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from emray.config import load_run_config
    from emray.eval.judge import JudgeError
    from emray.eval.run import evaluate

    config = load_run_config(args.config, args.overrides)
    try:
        evaluate(config, adapter=args.adapter, out_dir=args.out, progress=not args.no_progress, print_table=True)
    except JudgeError as err:
        print(f"emray eval: judge error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else config.run_dir() / "eval"
    stats = json.loads((out / "criteria.json").read_text()).get("judge", {})
    if stats:
        print(
            f"judge: {stats['requests']} judgments, {stats['cache_hits']} from cache, {stats['calls']} calls, "
            f"{stats['retries']} retries, {stats['prompt_tokens'] + stats['completion_tokens']} tokens, "
            f"~${stats['cost_usd']:.4f}"
        )
    print(f"results: {out}/criteria.json, {out}/per_question.json, {out}/answers.jsonl")
    return 0
