"""``emray data stage SPEC --dest DIR``: copy/fetch, check and place a sweep's data files; write a manifest.

``emray data check SWEEP --manifest DIR/manifest.json`` lists the data and question files the sweep
reads that the manifest does not hold (exit 1 if any).
"""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="stage data files on shared storage and check a sweep against them")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    stage = actions.add_parser(
        "stage", help="copy or fetch the files of a stage spec into DEST, checked, with a manifest"
    )
    stage.add_argument("spec", help="stage spec YAML (items: name, kind, source)")
    stage.add_argument("--dest", help="destination folder (default: the spec's dest)")
    stage.set_defaults(func=run_stage)
    check = actions.add_parser("check", help="which files a sweep reads are missing from a manifest")
    check.add_argument("sweep", help="sweep spec YAML")
    check.add_argument("--manifest", required=True, help="the manifest.json `emray data stage` wrote")
    check.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the sweep spec before checking (repeatable)",
    )
    check.set_defaults(func=run_check)


def run_stage(args) -> int:
    from emray.configio import load_config
    from emray.data.stage import StageSpec, stage

    manifest = stage(load_config(StageSpec, args.spec), args.dest)
    print(f"[emray] manifest: {manifest['dest']}/manifest.json ({len(manifest['items'])} items)")
    return 0


def sweep_paths(spec) -> list[str]:
    """Every data or question file the sweep's base run reads (benign tasks emray generates are no files)."""
    from emray.benign import is_task_name

    base = spec.base
    paths = [base.data.fine, *(base.benign.train + base.benign.test if base.benign else [])]
    if base.data.safe_pool:
        paths.append(base.data.safe_pool)
    if base.eval is not None:
        paths += [p for p in (base.eval.general, *base.eval.in_domain, *base.eval.benign) if p]
    return [str(p) for p in paths if not is_task_name(str(p))]


def run_check(args) -> int:
    import json

    from emray.data.stage import missing_paths
    from emray.sweep.spec import load_sweep_spec

    spec = load_sweep_spec(args.sweep, args.overrides)
    manifest = json.loads(open(args.manifest).read())
    missing = missing_paths(manifest, sweep_paths(spec))
    for path in missing:
        print(f"missing: {path}")
    print(f"[emray] {args.sweep}: {len(sweep_paths(spec)) - len(missing)} of {len(sweep_paths(spec))} files staged")
    return 1 if missing else 0
