"""``emray rejudge SWEEP_DIR --judge ...``: re-score a finished sweep's stored answers with another judge."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "rejudge",
        help="re-score every stored answer of a sweep with another judge (no generation); a judge-agreement table",
    )
    parser.add_argument("sweep_dir", help="the sweep's output folder, e.g. sweeps_out/toy")
    parser.add_argument(
        "--judge",
        required=True,
        help="the new judge: eval.judge settings over the sweep's, as a YAML mapping, e.g. "
        "'{backend: fixed, backend_options: {score: 20}}' or '{base_url: https://api.openai.com/v1, model: gpt-4.1-mini}'",
    )
    parser.add_argument("--name", help="the results' folder name (default: the backend or model and a settings hash)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from emray.configio import ConfigError
    from emray.sweep.rejudge import format_agreement, rejudge_sweep

    overrides = yaml.safe_load(args.judge)
    if not isinstance(overrides, dict):
        raise ConfigError(f"--judge {args.judge!r}: expected a YAML mapping of eval.judge settings")
    out, agreement = rejudge_sweep(args.sweep_dir, overrides, args.name)
    print(format_agreement(agreement))
    print(f"\nresults   {out}/results.jsonl (per trial; <criterion>_before: the sweep's judge)", file=sys.stdout)
    print(f"agreement {out}/agreement.jsonl (per arm and criterion)")
    print(f"answers   {args.sweep_dir}/trials/<key>/eval/rejudge/{out.name}/answers.jsonl")
    return 0
