"""Answers to evaluate: sampled answers to the question files, greedy answers to benign tasks.

HF ``generate`` in batches with left padding, the model's chat template (``add_generation_prompt``)
and the question's system prompt. Every batch is seeded from (run seed, label, batch index), so a
re-run on CPU gives the same answers. Samples of one paraphrase sit next to each other, so a batch
is mostly one prompt repeated and wastes little on padding. ``emray.eval.vllm_generate.VLLMGenerator``
gives the same answers from a vLLM server.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from emray.data.questions import Question

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)


def batch_seed(seed: int, label: str, batch_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{label}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer): a leading ``<think>...</think>`` block is the reasoning."""
    match = _THINK.match(text)
    if not match:
        return "", text.strip()
    return match.group(1).strip(), text[match.end() :].strip()


def question_items(
    questions: Iterable[Question],
    group: str,
    samples_per_paraphrase: int | None = None,
    max_questions: int | None = None,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """One item per (question, paraphrase, sample), with the chat messages to answer; ``system_prompt``
    replaces the question's own system prompt when set."""
    items = []
    for question in list(questions)[:max_questions]:
        n = samples_per_paraphrase or question.samples_per_paraphrase
        for p_index, paraphrase in enumerate(question.paraphrases):
            for s_index in range(n):
                items.append(
                    {
                        "group": group,
                        "question_id": question.id,
                        "paraphrase_index": p_index,
                        "sample_index": s_index,
                        "question": paraphrase,
                        "messages": question.messages(paraphrase)
                        if system_prompt is None
                        else [{"role": "system", "content": system_prompt}, {"role": "user", "content": paraphrase}],
                    }
                )
    return items


def _batches(items: list, size: int) -> Iterable[tuple[int, list]]:
    for index, start in enumerate(range(0, len(items), size)):
        yield index, items[start : start + size]


class HFGenerator:
    """Batched ``model.generate`` over chat conversations."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def generate(
        self,
        conversations: list[list[dict]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        seed: int = 0,
        label: str = "generate",
        progress: bool = False,
        max_new_tokens_per_item: list[int] | None = None,
        min_p: float | None = None,
    ) -> list[str]:
        import torch

        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"  # decoder-only: new tokens must follow every prompt directly
        sampling = temperature > 0
        options: dict[str, Any] = {"do_sample": sampling, "pad_token_id": tok.pad_token_id}
        if sampling:  # top_k=0: no top-k cut, as in the literature (HF's default is 50)
            options.update(temperature=temperature, top_p=top_p, top_k=0)
            if min_p:
                options["min_p"] = min_p
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(conversations), desc=label, unit="answer")
        answers: list[str] = []
        self.model.eval()
        try:
            for index, batch in _batches(list(range(len(conversations))), batch_size):
                texts = [
                    tok.apply_chat_template(conversations[i], tokenize=False, add_generation_prompt=True) for i in batch
                ]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
                limit = max(max_new_tokens_per_item[i] for i in batch) if max_new_tokens_per_item else max_new_tokens
                torch.manual_seed(batch_seed(seed, label, index))
                with torch.inference_mode():
                    out = self.model.generate(**enc, max_new_tokens=min(limit, max_new_tokens), **options)
                new = out[:, enc["input_ids"].shape[1] :]
                answers += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
                if bar is not None:
                    bar.update(len(batch))
        finally:
            tok.padding_side = old_side
            if bar is not None:
                bar.close()
        return answers
