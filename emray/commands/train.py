"""``emray train CONFIG``: one LoRA fine-tune with the config's defenses."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="LoRA fine-tune one model with the config's defenses")
    parser.add_argument("config", help="run config YAML")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path), e.g. train.max_steps=10; repeatable",
    )
    parser.add_argument("--out", help="run folder (default: <output_dir>/<name>)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from emray.config import load_run_config
    from emray.train.recipe import fine_tune

    config = load_run_config(args.config, args.overrides)
    result = fine_tune(config, run_dir=args.out)
    m = result.metrics
    print(
        f"trained {m.get('num_examples')} examples in {m.get('train_seconds')} s; "
        f"loss {m.get('first_loss', float('nan')):.4f} -> {m.get('last_loss', float('nan')):.4f}"
    )
    print(f"adapter: {result.adapter_dir}")
    return 0
