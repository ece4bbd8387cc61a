"""Persona vectors: e^l = mean h^l under "evil" system prompts − mean h^l under friendly ones.

Procedure (after Chen et al. 2025, "Persona Vectors"): for every (pos, neg) instruction pair and
every question, the model answers greedily (``max_new_tokens``) under each system prompt; the
conversation (prompt + its own response) is then run teacher-forced and the output of every decoder
block is averaged over the *response* tokens (up to and including the first end-of-turn token).
Per-sample means are averaged per side; e^l is pos − neg. Generated rather than fixed responses:
the vector should capture how the model *behaves* under the persona, not how it reads a text we
chose; greedy decoding keeps the stage deterministic, hence cacheable, and independent of a judge.

``extraction: reference`` (``judge_filter``) follows the reference code instead: sampled answers
(T 0.9, top-p 0.9, min-p 0.1, ``samples_per_question`` each, seeded), judged for the trait and for
coherence, and only the answer pairs the judge keeps enter the means (emray/steering/persona_judge.py).

Layer convention: ``vectors[l]`` matches ``hidden_states[l]`` — the output of decoder block l−1
(1 ≤ l ≤ L, raw residual stream, before the final norm); ``vectors[0]`` is zero (embeddings are
never steered). The file holds every layer, so one extraction serves every ``layer`` choice.

Cached per (model, prompts content, settings) under ``cache_dir()/persona/<model>/<key>/``:
``persona.safetensors`` (``vectors``: float32 [L+1, d]) and ``meta.json`` (and ``samples.jsonl``, the
judged answers, for a reference extraction).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from emray.cache_dirs import cache_subdir

DEFAULT_PROMPTS = Path(__file__).with_name("default_persona.json")
EXTRACT_VERSION = 2  # 2: teacher-forced pass right-padded from token ids (was the left-padded generate output)
VECTOR_FILE = "persona.safetensors"
META_FILE = "meta.json"
SAMPLES_FILE = "samples.jsonl"  # the judged answers of a reference extraction


def default_layer(num_layers: int) -> int:
    """About two thirds of the depth (e.g. 19 of 28 for Qwen2.5-7B, 3 of 4 for tiny)."""
    return max(1, min(num_layers, round(2 * num_layers / 3)))


def load_persona_prompts(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"instruction": [{"pos", "neg"}, ...], "questions": [...]}`` (the persona-vector file format)."""
    from emray.configio import read_text
    from emray.data.paths import resolve_data_path

    path = resolve_data_path(path) if path else DEFAULT_PROMPTS
    try:
        data = json.loads(read_text(path, error=ValueError, what="persona prompts file (JSON)"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: bad JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'instruction' and 'questions'")
    pairs = data.get("instruction")
    questions = data.get("questions")
    if not pairs or not all(isinstance(p, dict) and p.get("pos") and p.get("neg") for p in pairs):
        raise ValueError(f"{path}: 'instruction' must be a non-empty list of {{pos, neg}} system prompts")
    if not questions or not all(isinstance(q, str) and q for q in questions):
        raise ValueError(f"{path}: 'questions' must be a non-empty list of strings")
    return {"instruction": [{"pos": p["pos"], "neg": p["neg"]} for p in pairs], "questions": list(questions)}


def _digest(obj: Any) -> str:
    from emray.hashing import sha256, short

    return short(sha256(obj))


def _unwrap(model):
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


@contextlib.contextmanager
def _base_model_eval(model):
    """The model with any LoRA adapter disabled, in eval mode; restores both."""
    model = _unwrap(model)
    was_training = model.training
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    model.eval()
    try:
        with ctx, torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _decoder_layers(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


def _prompt_pairs(tokenizer, prompts: dict, side: str) -> list[tuple[str, str]]:
    """(chat prompt text, question) for every (instruction pair, question), pair-major."""
    return [
        (
            tokenizer.apply_chat_template(
                [{"role": "system", "content": pair[side]}, {"role": "user", "content": q}],
                tokenize=False,
                add_generation_prompt=True,
            ),
            q,
        )
        for pair in prompts["instruction"]
        for q in prompts["questions"]
    ]


def _generate(
    model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int, sampling: dict | None = None
) -> list[list[int]]:
    """Response token ids per text, through the first end-of-turn token. Greedy unless ``sampling``
    (``generate`` kwargs; the caller seeds torch's RNG)."""
    device = next(model.parameters()).device
    kwargs = {"do_sample": True, **sampling} if sampling else {"do_sample": False}
    responses: list[list[int]] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **kwargs,
            )
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id) + 1]
                responses.append(row)
    finally:
        tokenizer.padding_side = old_side
    return responses


def _response_means(
    model, tokenizer, texts: list[str], responses: list[list[int]], batch_size: int, with_eos: bool = True
) -> torch.Tensor:
    """[L+1, d]: mean over samples of each sample's mean block output on its response tokens
    (teacher-forced prompt + response; the end-of-turn token counted when ``with_eos``)."""
    layers = _decoder_layers(model)
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def hook(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    sums = None
    for start in range(0, len(texts), batch_size):
        rows, spans = [], []
        for text, resp in zip(texts[start : start + batch_size], responses[start : start + batch_size]):
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            if not with_eos and resp and resp[-1] == tokenizer.eos_token_id:
                resp = resp[:-1]
            if not resp:
                raise ValueError("persona: an empty response has no tokens to average over")
            rows.append(prompt + resp)
            spans.append((len(prompt), len(prompt) + len(resp)))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        weights = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, (row, (a, b)) in enumerate(zip(rows, spans)):  # right padding: positions stay 0..n-1
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
            weights[i, a:b] = 1.0 / (b - a)  # per-sample mean over response tokens
        captured.clear()
        handles = [layer.register_forward_hook(hook) for layer in layers]
        try:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        weights = weights.to(device)
        per_layer = torch.stack([torch.einsum("bt,btd->d", weights, h.float()) for h in captured])
        sums = per_layer if sums is None else sums + per_layer
    mean = sums / len(texts)
    # Row 0 (embeddings) is never steered: zero, so vectors[l] lines up with hidden_states[l].
    return torch.cat([torch.zeros_like(mean[:1]), mean])


def extract_persona_vector(
    model, tokenizer, prompts: dict, max_new_tokens: int = 32, batch_size: int = 16, judge_filter=None
) -> tuple[torch.Tensor, dict]:
    """(vectors [L+1, d] float32, stats) for ``model`` with any adapter disabled.

    ``judge_filter`` (a ``persona_judge.JudgeFilter``): the reference's procedure instead of greedy
    answers: sampled answers, kept per pair by the judge (emray/steering/persona_judge.py).
    """
    if judge_filter is not None:
        return _extract_judged(model, tokenizer, prompts, max_new_tokens, batch_size, judge_filter)
    with _base_model_eval(model) as base:
        sides = {}
        for side in ("pos", "neg"):
            texts = [t for t, _ in _prompt_pairs(tokenizer, prompts, side)]
            responses = _generate(base, tokenizer, texts, max_new_tokens, batch_size)
            sides[side] = (
                _response_means(base, tokenizer, texts, responses, batch_size),
                tokenizer.batch_decode(responses, skip_special_tokens=True),
            )
    vectors = (sides["pos"][0] - sides["neg"][0]).cpu().contiguous()
    stats = {
        "norms": [round(float(v), 6) for v in vectors.norm(dim=-1)],
        "examples": {"pos": sides["pos"][1][:2], "neg": sides["neg"][1][:2]},
    }
    return vectors, stats


def _extract_judged(
    model, tokenizer, prompts: dict, max_new_tokens: int, batch_size: int, flt
) -> tuple[torch.Tensor, dict]:
    """Sample ``samples_per_question`` answers per (pair, question) and side, judge them, keep the
    pairs the reference keeps, and take the mean difference over exactly those (response tokens
    without the end-of-turn token: the reference re-tokenises the decoded answer)."""
    from emray.steering.persona_judge import (
        SAMPLING,
        check_enough,
        judge_scores,
        kept_pairs,
    )

    rows: dict[str, dict] = {}
    with _base_model_eval(model) as base:
        for side_index, side in enumerate(("pos", "neg")):
            pairs = [p for p in _prompt_pairs(tokenizer, prompts, side) for _ in range(flt.samples_per_question)]
            torch.manual_seed(flt.seed * 2 + side_index)
            responses = _generate(base, tokenizer, [t for t, _ in pairs], max_new_tokens, batch_size, SAMPLING)
            answers = tokenizer.batch_decode(responses, skip_special_tokens=True)
            trait, coherence = judge_scores(flt, [q for _, q in pairs], answers)
            rows[side] = {
                "texts": [t for t, _ in pairs],
                "questions": [q for _, q in pairs],
                "responses": responses,
                "answers": answers,
                "trait": trait,
                "coherence": coherence,
            }
        kept = kept_pairs(flt, rows["pos"], rows["neg"])
        check_enough(flt, kept, rows["pos"], rows["neg"])
        means = {}
        for side, r in rows.items():
            idx = [i for i, k in enumerate(kept) if k]
            means[side] = _response_means(
                base,
                tokenizer,
                [r["texts"][i] for i in idx],
                [r["responses"][i] for i in idx],
                batch_size,
                with_eos=False,
            )
    vectors = (means["pos"] - means["neg"]).cpu().contiguous()
    samples = [
        {
            "side": side,
            "index": i,
            "question": r["questions"][i],
            "answer": r["answers"][i],
            "trait": r["trait"][i],
            "coherence": r["coherence"][i],
            "kept": kept[i],
        }
        for side, r in rows.items()
        for i in range(len(kept))
    ]
    stats = {
        "norms": [round(float(v), 6) for v in vectors.norm(dim=-1)],
        "examples": {side: [r["answers"][i] for i, k in enumerate(kept) if k][:2] for side, r in rows.items()},
        "kept_pairs": sum(kept),
        "total_pairs": len(kept),
        "samples": samples,
    }
    return vectors, stats


def _cache_key(model_cfg, prompts: dict, settings: dict) -> str:
    from emray.score.cache import model_key

    # model_key hashes a local folder's files, not just its name: "organism" names a different model per
    # world (quick / full / a new WORLD_VERSION), and a vector of another model must never be reused.
    return _digest(
        {
            "model": model_key(model_cfg),
            "prompts": _digest(prompts),
            "settings": settings,
            "version": EXTRACT_VERSION,
        }
    )


def persona_cache_dir(model_cfg, prompts: dict, settings: dict) -> Path:
    slug = model_cfg.name.strip("/").replace("/", "--")
    return cache_subdir("persona", slug) / _cache_key(model_cfg, prompts, settings)


def ensure_persona_vector(
    model_cfg,
    prompts: str | os.PathLike | None = None,
    *,
    max_new_tokens: int = 32,
    model=None,
    tokenizer=None,
    force: bool = False,
    judge_filter=None,
) -> Path:
    """Path of the cached persona-vector file for ``model_cfg`` (a ModelConfig), extracting it if needed.

    ``prompts``: a persona prompt file (default: the packaged ``default_persona.json``); the cache
    key uses its content, not its path. ``model``/``tokenizer``: an already loaded copy of that
    model (e.g. the LoRA-wrapped one about to be trained; its adapter is disabled while extracting)
    to avoid loading it again. ``judge_filter`` (``persona_judge.JudgeFilter``): the reference's
    sampled, judge-filtered extraction; its settings enter the cache key, and the judged answers are
    kept beside the vector (``samples.jsonl``). Safe to call from parallel workers (file lock).
    """
    from filelock import FileLock
    from safetensors.torch import save_file

    prompt_data = load_persona_prompts(prompts)
    settings = {"max_new_tokens": max_new_tokens, "responses": "greedy"}
    if judge_filter is not None:
        settings = {"max_new_tokens": max_new_tokens, "responses": "sampled, judge-filtered", **judge_filter.identity()}
    out_dir = persona_cache_dir(model_cfg, prompt_data, settings)
    path = out_dir / VECTOR_FILE
    with FileLock(str(out_dir) + ".lock"):
        if path.exists() and (out_dir / META_FILE).exists() and not force:
            return path
        if model is None or tokenizer is None:
            from emray.models import load_model

            model, tokenizer = load_model(model_cfg)
        vectors, stats = extract_persona_vector(
            model, tokenizer, prompt_data, max_new_tokens=max_new_tokens, judge_filter=judge_filter
        )
        samples = stats.pop("samples", None)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({"vectors": vectors}, str(tmp / VECTOR_FILE))
        if samples is not None:
            (tmp / SAMPLES_FILE).write_text("".join(json.dumps(row) + "\n" for row in samples))
        meta = {
            "model": model_cfg.name,
            "revision": model_cfg.revision,
            "dtype": model_cfg.dtype,
            "prompts": str(prompts or DEFAULT_PROMPTS),
            "prompts_hash": _digest(prompt_data),
            "num_pairs": len(prompt_data["instruction"]),
            "num_questions": len(prompt_data["questions"]),
            "settings": settings,
            "num_layers": vectors.shape[0] - 1,
            "hidden_size": vectors.shape[1],
            "default_layer": default_layer(vectors.shape[0] - 1),
            "layer_convention": "vectors[l] = mean diff of hidden_states[l] = output of decoder block l-1; vectors[0] = 0",
            "version": EXTRACT_VERSION,
            **stats,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    return path


def load_persona_vector(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    """(vectors [L+1, d] float32, meta) from a file written by ``ensure_persona_vector``."""
    from safetensors.torch import load_file

    path = Path(path)
    vectors = load_file(str(path))["vectors"]
    meta_path = path.with_name(META_FILE)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return vectors, meta
