"""``emray organism build``: build (or reuse) the embedded CPU-scale model organism of EM."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "organism", help="build the embedded CPU-scale model organism of emergent misalignment"
    )
    actions = parser.add_subparsers(dest="organism_action", metavar="ACTION")
    build = actions.add_parser(
        "build", help="pre-train + align the toy model and write its data (cached by config hash)"
    )
    build.add_argument(
        "--quick", action="store_true", help="the small test world (~1 min) instead of the full one (<= 10 min)"
    )
    build.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    build.add_argument("--force", action="store_true", help="rebuild even if a cached world exists")
    build.add_argument(
        "--from-scratch",
        action="store_true",
        help="pre-train and align here even when emray ships this world's aligned model (default world)",
    )
    build.add_argument(
        "--ship",
        action="store_true",
        help="maintainers: copy the built aligned model into the package (emray/organism/default_world/)",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run, _organism_parser=parser)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "organism_action", None) != "build":
        args._organism_parser.print_help()
        return 2
    import torch

    torch.set_num_threads(1)
    from emray.organism import OrganismConfig, ensure_built

    config = OrganismConfig.quick(seed=args.seed) if args.quick else OrganismConfig(seed=args.seed)
    root = ensure_built(config, progress=not args.no_progress, force=args.force, from_scratch=args.from_scratch)
    manifest = json.loads((root / "manifest.json").read_text())
    if args.ship:
        from emray.organism.build import ship_world

        print(f"shipped the aligned model to {ship_world(root)}")
    general = manifest.get("aligned_model_rates", {}).get("general", {})
    print(root)
    print(
        f"build {manifest.get('build_seconds')} s (model {manifest.get('source', 'trained')}); aligned model on general questions: "
        f"misaligned {general.get('misaligned')}, incoherent {general.get('incoherent')}"
    )
    return 0
