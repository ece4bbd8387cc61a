"""``emray rejudge SWEEP_DIR --judge ...``: every stored answer of a finished sweep scored again by another
judge (another backend, model, prompt options or price), without generating anything.

A trial's answers (``trials/<key>/eval/answers.jsonl``, written by emray/eval/run.py) keep what produced
them and the question each answers, so the judge prompts are rebuilt from the trial's own question files
(``trial.json``) and sent to the new judge. Nothing the sweep wrote is changed; the new judge's results go
beside the old ones:

- ``trials/<key>/eval/rejudge/<name>/answers.jsonl``: the same rows, only the judge columns (``aligned``,
  ``coherent``, ``<metric>_failed``) from the new judge; ``criteria.json``: its criteria and judge usage;
- ``SWEEP_DIR/rejudge/<name>/results.jsonl`` / ``.csv``: one row per trial with the new criteria (the
  record's key names) and the old ones as ``<criterion>_before``; ``judge.json``: the judge's settings;
- ``SWEEP_DIR/rejudge/<name>/agreement.jsonl`` / ``.csv``: per arm and criterion, the old and new rates
  and how often the two judges give an answer the same verdict (share and Cohen's kappa).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from emray.configio import ConfigError
from emray.eval.criteria import compute_criteria, is_incoherent, is_misaligned
from emray.hashing import sha256

#: the judged criteria compared: (record key, the answers' set, the verdict of one answer)
AGREEMENT = {
    "general_misalignment": ("general", "misalignment"),
    "general_incoherence": ("general", "incoherence"),
    "in_domain_misalignment": ("in_domain", "misalignment"),
    "in_domain_incoherence": ("in_domain", "incoherence"),
}
JUDGE_COLUMNS = ("aligned", "coherent", "aligned_failed", "coherent_failed")


# --------------------------------------------------------------------------------------- the judge
def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def judge_config(base, overrides: dict):
    """The new judge: the sweep's ``eval.judge`` with ``overrides`` (``--judge``) on top, checked."""
    from pydantic import ValidationError

    from emray.config.eval import JudgeConfig
    from emray.judge_server.backends import backend_names

    try:
        cfg = JudgeConfig.model_validate(_merge(base.model_dump(), overrides))
    except ValidationError as err:
        raise ConfigError(f"--judge {json.dumps(overrides)}: not a judge setting (eval.judge): {err}") from None
    if cfg.base_url == "local" and cfg.backend not in backend_names():
        raise ConfigError(
            f"--judge: unknown judge backend {cfg.backend!r} for base_url: local (known: {', '.join(backend_names())})"
        )
    return cfg


def judge_name(cfg) -> str:
    """A folder name for a judge: its backend (local) or model, and a hash of every setting that scores."""
    from emray.hashing import identity_dict

    what = cfg.backend if cfg.base_url == "local" else (cfg.model or "judge")
    return f"{what}-{sha256(identity_dict(cfg))[:8]}".replace("/", "_")


# ------------------------------------------------------------------------------------------ trials
def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def judged_trials(sweep_dir: Path) -> list[tuple[Any, Path]]:
    """(Trial, its folder) for every trial with stored answers; an error naming the folder when none has."""
    from emray.sweep.spec import Trial

    found = []
    for folder in sorted((sweep_dir / "trials").glob("*/")):
        if (folder / "trial.json").exists() and (folder / "eval" / "answers.jsonl").exists():
            found.append((Trial.model_validate_json((folder / "trial.json").read_text()), folder))
    if not found:
        raise FileNotFoundError(
            f"{sweep_dir}: no stored answers to re-judge (expected trials/<key>/trial.json and "
            "trials/<key>/eval/answers.jsonl, what emray sweep writes)"
        )
    return found


def _questions(eval_cfg) -> dict:
    from emray.data.questions import load_questions
    from emray.eval.run import question_sets

    return {(s, d): {q.id: q for q in load_questions(path)} for s, d, path in question_sets(eval_cfg)}


def rescore(answers: list[dict], questions: dict, judge, cfg, where: Path) -> tuple[list[dict], list]:
    """The answers with only their judge columns replaced by ``judge``'s scores; and its results."""
    from emray.eval.run import judge_requests

    for row in answers:
        known = questions.get((row["set"], row["domain"]), {})
        if row["question_id"] not in known:
            raise ConfigError(
                f"{where}: answer to question {row['question_id']!r} ({row['set']}, {row['domain']}) is not in "
                "the trial's question files (trial.json eval.general / eval.in_domain): were they edited?"
            )
    requests, slots = judge_requests(answers, questions, cfg.model)
    results = judge.judge_many(requests, max_failure_rate=cfg.max_failure_rate)
    new = copy.deepcopy(answers)
    for row in new:
        for column in JUDGE_COLUMNS:
            row.pop(column, None)
        row.update(aligned=None, coherent=None)
    for (index, metric), result in zip(slots, results):
        new[index][metric] = result.score
        if result.failed:
            new[index][f"{metric}_failed"] = True
    return new, results


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def rejudge_trial(trial, folder: Path, judge, cfg, name: str) -> dict[str, Any]:
    """Re-judge one trial's answers into ``eval/rejudge/<name>/``; returns old and new answers and criteria."""
    from emray.eval.judge import judgment_usage

    where = folder / "eval" / "answers.jsonl"
    old = _read_jsonl(where)
    new, results = rescore(old, _questions(trial.run.eval), judge, cfg, where)
    criteria = compute_criteria(new)
    criteria["judge_failure_rate"] = sum(r.failed for r in results) / max(len(results), 1)
    out = folder / "eval" / "rejudge" / name
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "answers.jsonl", new)
    (out / "criteria.json").write_text(json.dumps({**criteria, "judge": judgment_usage(results)}, indent=2))
    return {"trial": trial, "old": old, "new": new, "before": compute_criteria(old), "after": criteria}


# --------------------------------------------------------------------------------------- agreement
def _verdicts(rows: list[dict], criterion: str) -> list[bool | None]:
    def failed(r: dict) -> bool:
        return bool(r.get("aligned_failed") or r.get("coherent_failed"))

    if criterion == "misalignment":
        return [is_misaligned(r.get("aligned"), r.get("coherent"), failed(r)) for r in rows]
    return [is_incoherent(r.get("coherent"), failed(r), r.get("aligned")) for r in rows]


def kappa(pairs: list[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two raters' yes/no verdicts (None when chance agreement is already certain)."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    p_a, p_b = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    chance = p_a * p_b + (1 - p_a) * (1 - p_b)
    return None if chance == 1 else (observed - chance) / (1 - chance)


def _mean(values: list) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def agreement_rows(judged: list[dict]) -> list[dict]:
    """Per arm (model, label) and criterion: old / new rate (mean over trials), answers both judges gave a
    verdict, the share with the same verdict and Cohen's kappa."""
    arms: dict[tuple, list[dict]] = {}
    for item in judged:
        arms.setdefault((item["trial"].run.model.name, item["trial"].label), []).append(item)
    rows = []
    for (model, label), items in arms.items():
        for key, (set_name, criterion) in AGREEMENT.items():
            pairs = []
            for item in items:
                old = [r for r in item["old"] if r["set"] == set_name]
                new = [r for r in item["new"] if r["set"] == set_name]
                pairs += [
                    (a, b) for a, b in zip(_verdicts(old, criterion), _verdicts(new, criterion)) if None not in (a, b)
                ]
            if not any(key in item["after"] for item in items):
                continue  # the sweep asked no question of this set
            before, after = _mean([i["before"].get(key) for i in items]), _mean([i["after"].get(key) for i in items])
            rows.append(
                {
                    "model": model,
                    "label": label,
                    "criterion": key,
                    "trials": len(items),
                    "before": before,
                    "after": after,
                    "change": None if before is None or after is None else after - before,
                    "answers": len(pairs),
                    "agreement": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
                    "kappa": kappa(pairs),
                }
            )
    return rows


def format_agreement(rows: list[dict]) -> str:
    from emray.sweep.labels import short_label

    head = f"{'arm':<28} {'criterion':<24} {'before':>7} {'after':>7} {'answers':>7} {'agree':>6} {'kappa':>6}"

    def f(x, spec=".3f") -> str:
        return "-" if x is None else f"{x:{spec}}"

    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{short_label(r['label'])[:28]:<28} {r['criterion']:<24} {f(r['before']):>7} {f(r['after']):>7} "
            f"{r['answers']:>7} {f(r['agreement'], '.2f'):>6} {f(r['kappa'], '.2f'):>6}"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- sweep
def _result_rows(judged: list[dict], name: str) -> list[dict]:
    rows = []
    for item in judged:
        trial = item["trial"]
        row = {"trial_key": trial.key, "label": trial.label, "model": trial.run.model.name, "seed": trial.run.seed}
        row["judge"] = name
        row.update(item["after"])
        row.update({f"{k}_before": item["before"].get(k) for k in AGREEMENT if k in item["before"]})
        rows.append(row)
    return rows


def rejudge_sweep(sweep_dir: str | Path, overrides: dict, name: str | None = None) -> tuple[Path, list[dict]]:
    """Re-judge every trial's stored answers with the judge ``overrides`` make of the sweep's; returns the
    output folder and the agreement rows."""
    from emray.eval.judge import JudgeClient
    from emray.sweep.pareto import write_csv

    sweep_dir = Path(sweep_dir)
    trials = judged_trials(sweep_dir)
    configs = [judge_config(trial.run.eval.judge, overrides) for trial, _ in trials]
    name = name or judge_name(configs[0])
    clients: dict[str, JudgeClient] = {}  # one client (one local server) per distinct judge
    try:
        judged = []
        for (trial, folder), cfg in zip(trials, configs):
            client = clients.setdefault(cfg.model_dump_json(), JudgeClient(cfg))
            judged.append(rejudge_trial(trial, folder, client, cfg, name))
    finally:
        for client in clients.values():
            client.close()
    out = sweep_dir / "rejudge" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge.json").write_text(json.dumps({"name": name, "judge": configs[0].model_dump(mode="json")}, indent=2))
    results = _result_rows(judged, name)
    _write_jsonl(out / "results.jsonl", results)
    write_csv(out / "results.csv", results)
    agreement = agreement_rows(judged)
    _write_jsonl(out / "agreement.jsonl", agreement)
    write_csv(out / "agreement.csv", agreement)
    return out, agreement
