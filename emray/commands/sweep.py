"""``emray sweep SPEC``: run (or plan, or resume) a sweep of defenses on Ray."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="run a sweep of defenses x hyperparameters x seeds on Ray Tune")
    parser.add_argument("spec", help="sweep spec YAML (see sweeps/)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (trials, resources, stages) and exit")
    parser.add_argument(
        "--no-file-check",
        dest="check_files",
        action="store_false",
        help="with --dry-run: plan a sweep for another machine (its files are not here)",
    )
    parser.add_argument("--resume", action="store_true", help="resume an interrupted sweep; finished trials are kept")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key; keys outside the spec's top level address the base run config, e.g. model.name=smollm2-135m",
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="stream Ray, Trainer and library logs to the console (default: SWEEP_DIR/logs/<trial key>.log)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    """0: every trial finished; 1: some trial failed (listed with its error file); 2: nothing could start
    (also: another sweep holds the folder); 130 / 143: interrupted by SIGINT / SIGTERM."""
    import os
    import sys

    from emray.sweep.checks import PreflightError, preflight
    from emray.sweep.lock import SweepLockError
    from emray.sweep.runner import SweepInterrupted, make_plan, run_sweep
    from emray.sweep.spec import load_sweep_spec

    spec = load_sweep_spec(args.spec, args.overrides)
    if args.verbose:
        os.environ["EMRAY_VERBOSE"] = "1"  # read by the driver and, through PROPAGATED_ENV, the workers
    if args.dry_run:
        plan = make_plan(spec)
        print(plan.describe())
        problems = preflight(plan.trials, check_files=args.check_files)
        problems += dry_run_capacity(spec, plan, args.address, args.check_files)
        if problems:
            print("[emray] the sweep cannot run as planned:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        checked = "every file the trials read exists, " if args.check_files else "files not checked, "
        remote = args.address or os.environ.get("RAY_ADDRESS") or not args.check_files
        fits = "" if remote else ", a trial's resources fit this machine"
        print(f"[emray] preflight: {checked}every stage can be planned{fits}")
        return 0
    try:
        outcome = run_sweep(spec, resume=args.resume, address=args.address)
    except PreflightError as err:
        print(f"[emray] {err}", file=sys.stderr)
        return 2
    except SweepLockError as err:
        print(f"emray sweep: error: {err}", file=sys.stderr)
        return 2
    except SweepInterrupted as err:  # already reported: what finished, what --resume runs
        return err.exit_code  # 130 for SIGINT (Ctrl-C), 143 for SIGTERM
    return 1 if outcome.failed else 0


def dry_run_capacity(spec, plan, address: str | None, here: bool = True) -> list[str]:
    """At --dry-run: the trial's resources against this machine (the local cluster a sweep without
    --address starts); a cluster named by --address / RAY_ADDRESS, or a plan for another machine
    (--no-file-check), is checked when the sweep starts."""
    import os

    from emray.sweep.capacity import capacity_problems, describe_capacity, local_nodes

    address = address or os.environ.get("RAY_ADDRESS")
    if not here:
        print(
            "resources: not checked here (--no-file-check: planned for another machine); the sweep checks them when it starts"
        )
        return []
    if address:
        print(
            f"resources: not checked here (the cluster at {address}); the sweep checks them against its nodes when it starts"
        )
        return []
    nodes = local_nodes()
    print(describe_capacity(spec, nodes, "this machine (a local Ray cluster)"))
    return capacity_problems(spec, nodes, "this machine (a local Ray cluster)", has_stages=bool(plan.stages))
