"""Cached stages the sweep driver calls once, before any trial: ensemble -> pool scores -> selection.

    adapters = ensure_ensemble(run_config, datasets)                 # list[Path], trained once
    scores   = ensure_pool_scores(run_config, pool, adapters)        # Path of scores.jsonl
    selected = ensure_selection(run_config, "interleave_pp", params) # Path of selected.jsonl

Each returns a path under the cache named by a content hash of its inputs; when the file is there
the stage returns at once and computes nothing. Trials then get ``artifacts={"safe_selection":
selected}`` and the Interleaving+/++ defenses read it.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emray.cache_dirs import cache_subdir
from emray.config import RunConfig
from emray.defenses import selection_class, selection_params
from emray.hashing import short
from emray.score.cache import ScoreCache, adapter_hash, examples_hash, model_key, sha
from emray.score.pool import ALIGNED, ScorerPool, adapter_names
from emray.score.select import (
    check_pool,
    draw_from_top,
    histogram,
    is_refusal,
    loss_gap_scores,
    rank,
    safe_count,
    top_count,
)
from emray.stages.ensemble import ensure_ensemble

#: (model names) scored by this process, one entry per scoring call (tests assert cache hits add none)
SCORED: list[list[str]] = []


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _gpus() -> int:
    """GPUs the scorer can use: the Ray cluster's when Ray is running (the driver may have none)."""
    import ray
    import torch

    if ray.is_initialized():
        return int(ray.cluster_resources().get("GPU", 0))
    return torch.cuda.device_count()


def _use_gpu(run_config: RunConfig) -> bool:
    return run_config.model.device != "cpu" and _gpus() > 0


def default_workers(run_config: RunConfig) -> int:
    """One actor per GPU when there are GPUs, else one CPU actor."""
    return max(_gpus(), 1) if _use_gpu(run_config) else 1


def pool_path(run_config: RunConfig, pool: str | Path | None) -> str:
    path = pool or run_config.data.safe_pool
    if not path:
        raise ValueError("no safe pool: set data.safe_pool in the run config or the defense's `pool` param")
    return str(path)


def ensure_pool_scores(
    run_config: RunConfig,
    pool: str | Path | None,
    adapters: Sequence[str | Path],
    workers: int | None = None,
    token_budget: int | None = None,
    progress: bool = True,
) -> Path:
    """scores.jsonl for the pool: per sample, the aligned NLL and each ensemble member's NLL.

    Scores are cached per model (base or adapter) too, so a new ensemble member scores only itself.
    """
    from emray.data.chat import load_safe_pool

    path = pool_path(run_config, pool)
    examples = load_safe_pool(path)
    mkey, dkey = model_key(run_config.model), examples_hash(examples)
    settings = {"max_len": run_config.train.max_len}
    names = adapter_names(adapters)
    hashes = {name: adapter_hash(d) for name, d in names.items()}
    out_dir = cache_subdir(
        "scores", short(sha({"model": mkey, "data": dkey, "adapters": list(hashes.values()), "settings": settings}))
    )
    out = out_dir / "scores.jsonl"
    if out.exists():
        _log(progress, f"  pool scores: cached {out}")
        return out
    # Interleaving+ and ++ of one sweep score the same pool under the same ensemble as two stages at once:
    # the second waits here for the first, then reads its file (another process or node: a file lock).
    from filelock import FileLock

    with FileLock(str(out_dir / "scores.lock")):
        if out.exists():
            _log(progress, f"  pool scores: cached {out} (scored by another stage meanwhile)")
            return out
        return _score_pool(run_config, path, examples, names, hashes, settings, out, workers, token_budget, progress)


def _score_pool(run_config, path, examples, names, hashes, settings, out, workers, token_budget, progress) -> Path:
    """The body of ``ensure_pool_scores``: score what the per-model cache lacks, write scores.jsonl."""
    from emray.data.chat import final_answer

    out_dir = out.parent
    mkey, dkey = model_key(run_config.model), examples_hash(examples)
    cache = ScoreCache()
    keys = {
        ALIGNED: cache.key(mkey, None, dkey, settings),
        **{n: cache.key(mkey, h, dkey, settings) for n, h in hashes.items()},
    }
    scores = {name: cache.get(key) for name, key in keys.items()}
    missing = [name for name, values in scores.items() if values is None]
    if missing:
        workers = default_workers(run_config) if workers is None else workers
        _log(
            progress,
            f"  scoring {len(examples)} pool samples under {', '.join(missing)} on {workers or 'in-process'} worker(s)",
        )
        SCORED.append(missing)
        with ScorerPool(
            run_config.model.model_dump(),
            {n: names[n] for n in missing if n != ALIGNED},
            workers=workers,
            use_gpu=_use_gpu(run_config),
            max_len=run_config.train.max_len,
            token_budget=token_budget,
            threads=run_config.train.threads,
        ) as scorer:
            fresh = scorer.score(examples, missing, progress=progress)
        for name in missing:
            cache.put(keys[name], fresh[name])
            scores[name] = fresh[name]
    else:
        _log(progress, "  pool scores: every model cached")

    from emray.data.tokenize import IGNORE_INDEX
    from emray.models import load_tokenizer
    from emray.score.nll import tokenize_pool

    tokenizer = load_tokenizer(run_config.model.name)
    rows = tokenize_pool(tokenizer, examples, run_config.train.max_len)
    mis = list(names)
    with open(out.with_suffix(".tmp"), "w") as fh:
        for i, ex in enumerate(examples):
            fh.write(
                json.dumps(
                    {
                        "index": i,
                        "aligned": _num(scores[ALIGNED][i]),
                        "misaligned": [_num(scores[n][i]) for n in mis],
                        "answer_tokens": sum(1 for label in rows[i]["labels"][1:] if label != IGNORE_INDEX),
                        "answer_start": " ".join(final_answer(ex).split())[:80],  # one line, for tables
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    (out_dir / "meta.json").write_text(
        json.dumps(
            {
                "model": run_config.model.name,
                "pool": path,
                "pool_size": len(examples),
                "adapters": {n: names[n] for n in mis},
                "settings": settings,
            },
            indent=2,
        )
    )
    out.with_suffix(".tmp").replace(out)
    return out


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def read_scores(path: str | Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in open(path)]
    nan = float("nan")
    for r in rows:
        r["aligned"] = nan if r["aligned"] is None else r["aligned"]
        r["misaligned"] = [nan if v is None else v for v in r["misaligned"]]
    return rows


def write_scores_table(scores_path: str | Path, out_dir: str | Path, epsilon: float = 1.0) -> tuple[Path, Path]:
    """Copy the pool scores to ``out_dir`` as scores.jsonl and scores.csv (with s_d at ``epsilon``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_scores(scores_path)
    s = loss_gap_scores([r["aligned"] for r in rows], list(zip(*[r["misaligned"] for r in rows])), epsilon)
    jsonl, table = out_dir / "scores.jsonl", out_dir / "scores.csv"
    with open(jsonl, "w") as fj, open(table, "w", newline="") as fc:
        writer = csv.writer(fc)
        n_mis = len(rows[0]["misaligned"]) if rows else 0
        writer.writerow(
            [
                "index",
                "aligned",
                *[f"mis{m}" for m in range(n_mis)],
                f"s_d(eps={epsilon})",
                "answer_tokens",
                "answer_start",
            ]
        )
        for r, score in zip(rows, s):
            fj.write(
                json.dumps(
                    {**{k: _num(v) if isinstance(v, float) else v for k, v in r.items()}, "s_d": _num(score)},
                    ensure_ascii=False,
                )
                + "\n"
            )
            writer.writerow([r["index"], r["aligned"], *r["misaligned"], score, r["answer_tokens"], r["answer_start"]])
    return jsonl, table


def selection_key(
    method: str,
    params: Any,
    model: str,
    pool: str,
    adapters: list[str],
    k: int,
    top: int,
    max_len: int | None,
    seed: int,
) -> str:
    """The selection's cache folder: everything its result depends on. The run's seed enters only
    when k are drawn from a larger top (the strict top k does not depend on it)."""
    return short(
        sha(
            {
                "method": method,
                "params": params.model_dump(),
                "model": model,
                "pool": pool,
                "adapters": adapters,
                "k": k,
                "top": top,
                "max_len": max_len,
                "draw_seed": seed if top > k else None,
            }
        )
    )


def ensure_selection(
    run_config: RunConfig,
    defense_name: str,
    params: Any = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """selected.jsonl (the k safe samples to interleave) + summary.json beside it.

    The k are drawn with the run's seed from the best ``quantile`` of the pool by s_d (the strict
    top k, best first, when ``quantile`` is None).
    """
    from emray.config.fine_tunes import fine_tunes
    from emray.data.chat import final_answer, load_safe_pool, write_chat_jsonl
    from emray.data.em_domains import ensemble_entries
    from emray.data.training import load_training_examples

    cls = selection_class(defense_name)
    p = selection_params(defense_name, params)
    path = pool_path(run_config, p.pool)
    # Sized for the trial's largest fine-tune (narrow or benign): each interleaves its own first k rows.
    n_fine = max(len(load_training_examples(c)) for c in fine_tunes(run_config))
    k = safe_count(n_fine, p.safe_fraction)
    pool = load_safe_pool(path)
    candidates = cls.candidates(p, pool)  # the defense's own filter (Interleaving++ drops refusals)
    dropped = len(pool) - len(candidates)
    # k is sized for the data, not for max_steps: the trainer draws its batches from the whole shuffled
    # mixed set, so a k sized for fewer rows would leave less than safe_fraction of what it reads safe.
    sized = f"k = {k}: {p.safe_fraction:g} of the trial's largest fine-tune, {n_fine} rows, whatever its max_steps"
    check_pool(
        len(candidates), k, f"{defense_name} ({path}{f', {dropped} dropped by its filter' if dropped else ''}; {sized})"
    )
    # the quantile is of the whole (label-filtered) pool, as the reference's top 5000 of its 100k rows
    top = min(top_count(len(pool), p.quantile, k), len(candidates))

    entries = ensemble_entries(run_config, p)
    adapters = ensure_ensemble(
        run_config, entries, p.ensemble_steps, p.ensemble_max_examples, progress, seed=p.ensemble_seed
    )
    key = selection_key(
        defense_name,
        p,
        model_key(run_config.model),
        examples_hash(pool),
        [adapter_hash(a) for a in adapters],
        k,
        top,
        run_config.train.max_len,
        run_config.seed,
    )
    out_dir = cache_subdir("selections", key)
    selected_path, summary_path = out_dir / "selected.jsonl", out_dir / "summary.json"
    if selected_path.exists() and summary_path.exists():
        _log(progress, f"  selection: cached {selected_path}")
        return selected_path

    rows = read_scores(ensure_pool_scores(run_config, path, adapters, workers, progress=progress))
    s = loss_gap_scores([r["aligned"] for r in rows], list(zip(*[r["misaligned"] for r in rows])), p.epsilon)
    ranked = [candidates[j] for j in rank([s[i] for i in candidates])]
    chosen = draw_from_top(ranked, k, top, run_config.seed)
    write_chat_jsonl(selected_path, ({"messages": pool[i]["messages"]} for i in chosen))
    candidate_scores = [s[i] for i in candidates]
    threshold = s[ranked[top - 1]] if top else None  # the lowest s_d the draw could pick
    summary = {
        "method": defense_name,
        "params": p.model_dump(),
        "pool": path,
        "pool_size": len(pool),
        "refusals_in_pool": sum(is_refusal(final_answer(ex)) for ex in pool),
        "refusals_dropped": dropped,
        "candidates": len(candidates),
        "fine_examples": n_fine,
        "top": top,
        "draw_seed": run_config.seed if top > k else None,
        "selected": len(chosen),
        "selected_indices": chosen,
        "selected_scores": [_num(s[i]) for i in chosen],
        "selected_refusals": sum(is_refusal(final_answer(pool[i])) for i in chosen),
        "threshold": _num(threshold),
        "ensemble": [str(a) for a in adapters],
        "ensemble_sources": [str(e) for e in entries],
        "histogram": histogram(candidate_scores, marks=[threshold] if top else []),
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    return selected_path


def format_summary(summary: dict) -> str:
    lines = [
        f"method: {summary['method']}  (safe_fraction={summary['params']['safe_fraction']}, epsilon={summary['params']['epsilon']})",
        f"pool: {summary['pool']}  ({summary['pool_size']} rows, {summary['refusals_in_pool']} refusals)",
        f"refusals dropped: {summary['refusals_dropped']}",
        f"candidates: {summary['candidates']}",
        f"selected: {summary['selected']} for {summary['fine_examples']} fine-tuning examples, "
        + (
            f"drawn with seed {summary['draw_seed']} from the top {summary.get('top')} by s_d "
            if summary.get("draw_seed") is not None
            else "the strict top by s_d "
        )
        + f"({summary['selected_refusals']} of them refusals; threshold s_d={summary['threshold']})",
        "s_d histogram of the candidates ('<' marks the selection threshold):",
        summary["histogram"],
    ]
    return "\n".join(lines)


def params_from_config(run_config: RunConfig, defense_name: str, **overrides: Any):
    """The config's own params for ``defense_name`` (defaults when not listed), with ``overrides``."""
    from emray.defenses import get_defense_class

    listed = next((d.params.model_dump(by_alias=True) for d in run_config.defenses if d.name == defense_name), {})
    cls = get_defense_class(defense_name)
    return cls.Params.model_validate({**listed, **{k: v for k, v in overrides.items() if v is not None}})
