"""``evaluate``: generation -> judge -> criteria for one model (+ adapter); what ``emray eval`` and a
sweep trial call.

Writes into ``<run dir>/eval`` (or ``out_dir``): ``answers.jsonl`` (every answer with its scores),
``criteria.json`` (flat criteria + judge stats), ``per_question.json`` (per-question breakdown and
benign predictions). Answers are written before judging, keyed by what produced them, so a run
whose judge failed re-judges the same answers (from the judge cache) instead of regenerating.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

from emray.configio import ConfigError
from emray.data.training import load_benign
from emray.eval.criteria import check_judgeable, compute_criteria, format_table, per_question
from emray.eval.generate import HFGenerator, question_items, split_reasoning
from emray.eval.judge import DEFAULT_JUDGE_MODEL, JudgeClient, JudgeRequest, judgment_usage

METRICS = ("aligned", "coherent")
BENIGN_MARGIN_TOKENS = 8  # a greedy answer longer than gold + this cannot match, so stop there


class Judge(Protocol):
    def judge_many(self, requests: list[JudgeRequest], progress: bool | str = False) -> list: ...


def _sha(obj: Any) -> str:
    from emray.hashing import sha256

    return sha256(obj)


def _adapter_identity(adapter: str | None) -> Any:
    if adapter is None:
        return None
    files = sorted(p for p in Path(adapter).glob("adapter_*") if p.is_file())
    from emray.hashing import file_sha256

    return {p.name: file_sha256(p) for p in files} or str(adapter)


def question_sets(cfg) -> list[tuple[str, str | None, str]]:
    """(set, domain, path): the general file, then each in-domain file (domain = file stem)."""
    sets = [("general", None, cfg.general)] if cfg.general else []
    stems = [Path(p.split(":", 1)[-1]).stem for p in cfg.in_domain]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"eval.in_domain: two files share a name (domains are named by file stem): {stems}")
    return sets + [("in_domain", stem, path) for stem, path in zip(stems, cfg.in_domain)]


def make_generator(run_config, adapter: str | None = None, model=None, tokenizer=None):
    cfg = run_config.eval
    if model is not None:
        return HFGenerator(model, tokenizer)
    if cfg.generator == "vllm" or (cfg.generator == "auto" and vllm_available(cfg.vllm)):
        from emray.eval.vllm_generate import VLLMGenerator

        return VLLMGenerator(run_config.model, adapter, cfg.vllm, seed=run_config.seed)
    import torch

    from emray.models import load_model

    if run_config.train.threads:
        torch.set_num_threads(run_config.train.threads)
    model, tokenizer = load_model(run_config.model, adapter=adapter)
    return HFGenerator(model, tokenizer)


def vllm_available(vllm_cfg) -> bool:
    """``generator: auto`` takes vLLM on a GPU when it is reachable: a server URL, or vLLM's environment."""
    import torch

    if not torch.cuda.is_available():
        return False
    if vllm_cfg.url:
        return True
    from emray.eval.vllm_server import resolve_python

    try:
        resolve_python(vllm_cfg.python)
    except ConfigError:
        return False
    return True


def _generate_answers(run_config, items: list[dict], generator_factory, progress: bool) -> list[dict]:
    cfg = run_config.eval
    generator = generator_factory()
    labels = list(dict.fromkeys(it["group"] for it in items))
    for label in labels:  # one label a question set: its batches get their own seeds
        chunk = [it for it in items if it["group"] == label]
        texts = generator.generate(
            [it["messages"] for it in chunk],
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            min_p=cfg.min_p,
            batch_size=cfg.batch_size,
            seed=run_config.seed,
            label=label,
            progress=progress,
        )
        for it, text in zip(chunk, texts):
            it["reasoning"], it["answer"] = split_reasoning(text)
            it["raw_answer"] = text
    return items


def _benign(run_config, generator_factory, progress: bool) -> tuple[dict, list[dict]]:
    from emray.data.chat import final_answer, prompt_messages

    cfg = run_config.eval
    results, rows = {}, []
    for entry in cfg.benign:
        task, examples = load_benign(entry, cfg.max_benign)
        generator = generator_factory()
        golds = [final_answer(ex).strip() for ex in examples]
        tok = getattr(generator, "tokenizer", None)
        limits = (
            [len(tok(g, add_special_tokens=False)["input_ids"]) + BENIGN_MARGIN_TOKENS for g in golds] if tok else None
        )
        preds = generator.generate(
            [prompt_messages(ex) for ex in examples],
            max_new_tokens=cfg.max_new_tokens,
            temperature=0.0,
            batch_size=cfg.batch_size,
            seed=run_config.seed,
            label=f"benign/{task}",
            progress=progress,
            max_new_tokens_per_item=limits,
        )
        correct = [p.strip() == g for p, g in zip(preds, golds)]
        results[task] = {"correct": sum(correct), "n": len(golds)}
        rows += [
            {"task": task, "index": i, "prediction": p, "gold": g, "correct": c}
            for i, (p, g, c) in enumerate(zip(preds, golds, correct))
        ]
    return results, rows


def judge_requests(items: list[dict], questions: dict, judge_model: str | None) -> tuple[list[JudgeRequest], list]:
    requests, slots = [], []
    for index, it in enumerate(items):
        q = questions[(it["set"], it["domain"])][it["question_id"]]
        for metric in METRICS:
            if metric not in q.judge_prompts:
                continue
            prompt = q.render_judge_prompt(
                metric, question=it["question"], answer=it["answer"], reasoning=it["reasoning"]
            )
            requests.append(JudgeRequest(prompt, judge_model or q.judge or DEFAULT_JUDGE_MODEL))
            slots.append((index, metric))
    return requests, slots


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    tmp.replace(path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _load_cached_answers(path: Path, key: str) -> list[dict] | None:
    key_file = path.with_suffix(".key")
    if not (path.exists() and key_file.exists() and key_file.read_text().strip() == key):
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate(
    run_config,
    adapter: str | None = None,
    judge: Judge | None = None,
    out_dir: str | Path | None = None,
    model=None,
    tokenizer=None,
    progress: bool = True,
    print_table: bool = False,
) -> dict[str, Any]:
    """Generate, judge and score; returns the flat criteria dict (also written to criteria.json).

    ``judge``: anything with ``judge_many(requests, progress)`` (a JudgeClient, a JudgePool); None
    builds a JudgeClient from ``run_config.eval.judge`` for this call. ``model``/``tokenizer``: an
    already loaded model (e.g. the one just trained) instead of loading ``run_config.model`` + adapter.
    """
    cfg = run_config.eval
    out = Path(out_dir) if out_dir else run_config.run_dir() / "eval"
    out.mkdir(parents=True, exist_ok=True)
    sets = question_sets(cfg)
    if not sets and not cfg.benign:
        raise ConfigError("eval: nothing to evaluate; set eval.general, eval.in_domain or eval.benign")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise FileNotFoundError(f"--adapter {adapter}: not a LoRA adapter folder (no adapter_config.json)")
    own_judge = judge is None and bool(sets)
    if own_judge:  # before generating: a missing API key fails now, not after an hour of sampling
        judge = JudgeClient(cfg.judge)
    opened: list = []  # the generator, once made: a vLLM generator's server lives as long as this evaluation
    try:
        return _evaluate(run_config, adapter, judge, out, sets, model, tokenizer, progress, print_table, opened)
    finally:
        for generator in opened:
            getattr(generator, "close", lambda: None)()
        if own_judge:
            judge.close()  # type: ignore[union-attr]  # our own JudgeClient


def _evaluate(
    run_config, adapter, judge, out: Path, sets, model, tokenizer, progress: bool, print_table: bool, opened: list
) -> dict[str, Any]:
    from emray.data.questions import load_questions

    cfg = run_config.eval
    started = time.time()

    questions: dict = {}
    items: list = []
    judged: dict = {}
    files: dict = {}
    for set_name, domain, path in sets:
        qs = load_questions(path)
        questions[(set_name, domain)] = {q.id: q for q in qs}
        label = set_name if domain is None else f"in_domain/{domain}"
        files[(set_name, domain)] = path
        counts = judged.setdefault((set_name, domain), dict.fromkeys(METRICS, 0))
        for it in question_items(qs, label, cfg.samples_per_paraphrase, cfg.max_questions, cfg.system_prompt):
            items.append({"set": set_name, "domain": domain, **it})
            for metric in METRICS:
                counts[metric] += metric in questions[(set_name, domain)][it["question_id"]].judge_prompts
    check_judgeable(judged, files)  # before sampling: a rate over zero judgments is an error, not 0 %

    generator = None

    def generator_factory():
        nonlocal generator
        if generator is None:
            generator = make_generator(run_config, adapter, model, tokenizer)
            opened.append(generator)
        return generator

    gen_key = _sha(
        {
            "model": run_config.model.model_dump(),
            "adapter": _adapter_identity(adapter),
            "trained_model": id(model) if model is not None else None,
            "seed": run_config.seed,
            "settings": cfg.model_dump(exclude={"judge", "benign", "max_benign", "vllm"}),
            "items": [it["messages"] for it in items],
        }
    )
    answers_path = out / "answers.jsonl"
    cached = _load_cached_answers(answers_path, gen_key) if model is None else None
    if cached is not None and len(cached) == len(items):
        items = cached
    elif items:
        items = _generate_answers(run_config, items, generator_factory, progress)
        for it in items:
            it.pop("messages")
            it.update(aligned=None, coherent=None)
        _write_jsonl(answers_path, items)
        answers_path.with_suffix(".key").write_text(gen_key)
    generated = time.time()

    judge_stats: dict[str, Any] = {}
    if items:
        requests, slots = judge_requests(items, questions, cfg.judge.model)
        results = judge.judge_many(
            requests, progress="judge" if progress else False, max_failure_rate=cfg.judge.max_failure_rate
        )
        for (index, metric), result in zip(slots, results):
            items[index][metric] = result.score
            # a failed judgment has no verdict; an abstention (score None) is counted as unscored
            items[index].pop(f"{metric}_failed", None)
            if result.failed:
                items[index][f"{metric}_failed"] = True
        stats = getattr(judge, "get_stats", None)
        judge_stats = stats() if stats else {}
        # This evaluation's own count (a shared pool's stats cover the whole sweep).
        judge_stats["failed_judgments"] = sum(r.failed for r in results)
        judge_stats["judgments"] = len(results)
        judge_stats["own"] = judgment_usage(results)
        _write_jsonl(answers_path, items)
    judged_at = time.time()

    benign_results, benign_rows = _benign(run_config, generator_factory, progress) if cfg.benign else ({}, [])
    criteria = compute_criteria(items, benign_results)
    criteria["judge_failure_rate"] = judge_stats.get("failed_judgments", 0) / max(judge_stats.get("judgments", 0), 1)
    timing = {
        "generate_s": round(generated - started, 3),
        "judge_s": round(judged_at - generated, 3),
        "benign_s": round(time.time() - judged_at, 3),
    }
    _write_json(
        out / "criteria.json",
        {**criteria, "judge": judge_stats, "timing": timing, "adapter": str(adapter) if adapter else None},
    )
    _write_json(out / "per_question.json", {"questions": per_question(items), "benign": benign_rows})
    if print_table:
        print(format_table(criteria))
    return criteria
