"""A cheap evaluation of a model in training: a subset of the question files (the first ``questions`` of
each, ``samples`` answers per paraphrase), sampled with the run's own generation settings, judged by the
same judge and scored by the same criteria code as the final evaluation (emray/eval/run.py). What a sweep
trial's early-stop probe measures (emray/sweep/early_stop.py)."""

from __future__ import annotations

import time
from typing import Any

from emray.eval.criteria import compute_criteria
from emray.eval.generate import HFGenerator, question_items, split_reasoning
from emray.eval.run import judge_requests, question_sets


def probe_items(run_config, questions: int | None, samples: int, in_domain: bool) -> tuple[list[dict], dict]:
    """(items to answer, {(set, domain): {question id: Question}}) of the probe's subset."""
    from emray.data.questions import load_questions

    cfg = run_config.eval
    items: list[dict] = []
    by_set: dict = {}
    for set_name, domain, path in question_sets(cfg):
        if set_name == "in_domain" and not in_domain:
            continue
        qs = load_questions(path)
        by_set[(set_name, domain)] = {q.id: q for q in qs}
        label = set_name if domain is None else f"in_domain/{domain}"
        for it in question_items(qs, label, samples, questions, cfg.system_prompt):
            items.append({"set": set_name, "domain": domain, **it})
    return items, by_set


def probe_evaluate(
    run_config, model, tokenizer, judge, questions: int | None, samples: int, in_domain: bool, label: str
) -> tuple[dict[str, Any], list[dict]]:
    """(criteria, answers) of the probe subset for ``model`` as it is now; ``label`` seeds the sampling
    (with the run's seed), so a probe at another step draws other samples."""
    cfg = run_config.eval
    items, questions_by_set = probe_items(run_config, questions, samples, in_domain)
    started = time.time()
    generator = HFGenerator(model, tokenizer)
    for group in dict.fromkeys(it["group"] for it in items):
        chunk = [it for it in items if it["group"] == group]
        texts = generator.generate(
            [it["messages"] for it in chunk],
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            min_p=cfg.min_p,
            batch_size=cfg.batch_size,
            seed=run_config.seed,
            label=f"{label}/{group}",
        )
        for it, text in zip(chunk, texts):
            it["reasoning"], it["answer"] = split_reasoning(text)
            it.pop("messages")
    generated = time.time()
    requests, slots = judge_requests(items, questions_by_set, cfg.judge.model)
    results = judge.judge_many(requests, progress=False, max_failure_rate=cfg.judge.max_failure_rate)
    for (index, metric), result in zip(slots, results):
        items[index][metric] = result.score
        if result.failed:
            items[index][f"{metric}_failed"] = True
    criteria = compute_criteria(items)
    criteria["probe_generate_s"] = round(generated - started, 3)
    criteria["probe_judge_s"] = round(time.time() - generated, 3)
    return criteria, items
