"""``emray persona extract CONFIG``: compute (or find cached) the persona vector of the config's model."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("persona", help="extract the persona (evil - friendly) steering vector of a model")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    extract = actions.add_parser("extract", help="extract and cache the persona vector for CONFIG's model")
    extract.add_argument("config", help="run config YAML (its model; its persona defense's prompts if any)")
    extract.add_argument(
        "--prompts", help="persona prompt JSON ({instruction: [{pos, neg}], questions}); default: packaged set"
    )
    extract.add_argument("--layer", type=int, help="layer to report (hidden_states index; default: about 2/3 of depth)")
    extract.add_argument(
        "--max-new-tokens", type=int, default=None, help="response length (default: the defense's, 32)"
    )
    extract.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path), e.g. train.max_steps=10; repeatable",
    )
    extract.add_argument(
        "--extraction",
        choices=["greedy", "reference"],
        default=None,
        help="greedy answers (default) or the reference's sampled, judge-filtered ones (uses eval.judge)",
    )
    extract.add_argument("--force", action="store_true", help="recompute even if cached")
    extract.add_argument("--out", help="also copy the vector file and its meta.json into this folder")
    extract.set_defaults(func=run_extract)


def run_extract(args) -> int:
    import json
    import shutil
    from pathlib import Path

    from emray.config import load_run_config
    from emray.defenses.persona import PersonaParams, judge_filter
    from emray.steering import default_layer, ensure_persona_vector, load_persona_vector

    config = load_run_config(args.config, args.overrides)
    params = next((s.params.model_dump(by_alias=True) for s in config.defenses if s.name == "persona"), {})
    for key, value in (
        ("prompts", args.prompts),
        ("max_new_tokens", args.max_new_tokens),
        ("extraction", args.extraction),
    ):
        if value:
            params[key] = value
    p = PersonaParams.model_validate(params)
    if config.train.threads:
        import torch

        torch.set_num_threads(config.train.threads)
    path = ensure_persona_vector(
        config.model, p.prompts, max_new_tokens=p.max_new_tokens, force=args.force, judge_filter=judge_filter(config, p)
    )
    vectors, meta = load_persona_vector(path)
    total = vectors.shape[0] - 1
    layer = args.layer or p.layer or default_layer(total)
    if not 1 <= layer <= total:
        print(f"emray persona: --layer must be in 1..{total}")
        return 2
    norms = vectors.norm(dim=-1)
    print(f"persona vector: {path}")
    print(f"model {config.model.name}: {total} layers x {vectors.shape[1]}; prompts {meta.get('prompts')}")
    if "kept_pairs" in meta:
        print(f"judge filter: kept {meta['kept_pairs']} of {meta['total_pairs']} answer pairs")
    for i in range(1, total + 1):
        print(f"  layer {i:3d}  |e| = {float(norms[i]):.4f}{'  <- layer' if i == layer else ''}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / path.name)
        (out / "meta.json").write_text(json.dumps({**meta, "layer": layer}, indent=2))
        print(f"copied to {out}")
    return 0
