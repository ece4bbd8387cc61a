"""Greedy vs reference (judge-filtered) persona vectors of one model: what the filter keeps and how
the two vectors differ (docs/defenses.md, "Reference settings, measured on the organism").

    python scripts/persona_compare.py [--model organism] [--prompts organism:data/persona/evil_extract.json]

Extracts (or reads from the cache) both vectors with the local rules judge, prints the judge's trait
scores of the greedy answers per side, the reference extraction's kept pairs, and per layer the
cosine and norm ratio of the two vectors.
"""

from __future__ import annotations

import argparse
import collections

import torch


def main() -> None:
    from emray.config import ModelConfig
    from emray.config.eval import JudgeConfig
    from emray.models import load_model
    from emray.steering import (
        ensure_persona_vector,
        load_persona_prompts,
        load_persona_vector,
    )
    from emray.steering.persona_judge import (
        REFERENCE_JUDGE_MODEL,
        JudgeFilter,
        judge_scores,
    )
    from emray.steering.persona_vector import _generate, _prompt_pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--prompts", default="organism:data/persona/evil_extract.json")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = ModelConfig(name=args.model)
    flt = JudgeFilter(judge=JudgeConfig(base_url="local", backend="rules"), judge_model=REFERENCE_JUDGE_MODEL)
    greedy, _ = load_persona_vector(ensure_persona_vector(cfg, args.prompts, max_new_tokens=args.max_new_tokens))
    reference, meta = load_persona_vector(
        ensure_persona_vector(cfg, args.prompts, max_new_tokens=args.max_new_tokens, judge_filter=flt)
    )
    model, tok = load_model(cfg)
    model.eval()
    prompts = load_persona_prompts(args.prompts)
    with torch.no_grad():
        for side in ("pos", "neg"):
            pairs = _prompt_pairs(tok, prompts, side)
            answers = tok.batch_decode(
                _generate(model, tok, [t for t, _ in pairs], args.max_new_tokens, 16), skip_special_tokens=True
            )
            trait, coherence = judge_scores(flt, [q for _, q in pairs], answers)
            print(
                f"greedy {side}: trait scores {dict(collections.Counter(trait))}, coherence {dict(collections.Counter(coherence))}"
            )
    print(f"reference: kept {meta['kept_pairs']} of {meta['total_pairs']} answer pairs")
    for layer in range(1, greedy.shape[0]):
        cos = torch.nn.functional.cosine_similarity(greedy[layer], reference[layer], dim=0).item()
        print(
            f"layer {layer}: |greedy| {greedy[layer].norm():.3f} |reference| {reference[layer].norm():.3f} "
            f"ratio {reference[layer].norm() / greedy[layer].norm():.2f} cosine {cos:.3f}"
        )


if __name__ == "__main__":
    main()
