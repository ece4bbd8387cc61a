"""``emray config show FILE``: print the resolved, validated config."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="show a run config or sweep spec, resolved and validated")
    actions = parser.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="print the resolved config")
    show.add_argument("file", help="a run config or sweep spec YAML")
    show.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path), e.g. train.max_steps=10; repeatable",
    )
    show.set_defaults(func=run)


def run(args) -> int:
    from emray.configio import dump_yaml, read_yaml

    data, _ = read_yaml(args.file)
    if "search" in data or "base" in data:
        from emray.sweep.spec import load_sweep_spec

        config = load_sweep_spec(args.file, args.overrides)
    else:
        from emray.config import load_run_config

        config = load_run_config(args.file, args.overrides)  # type: ignore[assignment]  # a run config, not a spec: printed the same way
    print(dump_yaml(config), end="")
    return 0
