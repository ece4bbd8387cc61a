"""Chat -> token ids with labels on assistant tokens only, for any chat template.

Templates rarely mark assistant spans (TRL's ``assistant_only_loss`` needs ``{% generation %}``
markers that most templates lack), so we find them by rendering prefixes: the assistant tokens of
turn i are those between ``render(messages[:i], add_generation_prompt=True)`` and
``render(messages[:i+1])``. That includes the end-of-turn token (so the model learns to stop) but not the template's
whitespace after it.
"""

from __future__ import annotations

IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The chat template does not render conversations as growing prefixes."""


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the whole conversation and the [start, end) span of every assistant turn."""
    full = _ids(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _ids(tokenizer, messages[:i], add_generation_prompt=True)
        through = _ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full[: len(through)] != through or through[: len(before)] != before:
            raise TemplateError(
                "the chat template does not render the conversation as growing prefixes "
                f"(assistant turn {i}); emray cannot locate the assistant tokens"
            )
        start, end = len(before), len(through)
        # Keep the end-of-turn token but not template whitespace after it (e.g. ChatML's newline).
        eos_positions = [j for j in range(start, end) if full[j] == tokenizer.eos_token_id]
        if eos_positions:
            end = eos_positions[-1] + 1
        spans.append((start, end))
    return full, spans


#: No token is longer than this many characters, so a message's text past ``max_len`` times this can only
#: produce tokens that truncation drops: cut before tokenizing, so memory stays bounded by ``max_len``
#: (a 10 MB answer row once took 3.9 GB to tokenize, to keep its first 512 tokens).
MAX_CHARS_PER_TOKEN = 64


def _bounded(messages: list[dict], max_len: int) -> list[dict]:
    limit = max_len * MAX_CHARS_PER_TOKEN
    return [
        {**m, "content": m["content"][:limit]} if isinstance(m.get("content"), str) and len(m["content"]) > limit else m
        for m in messages
    ]


def tokenize_chat(tokenizer, messages: list[dict], max_len: int | None = None) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}``; labels are -100 except on assistant tokens. Truncates at ``max_len``."""
    if max_len is not None:
        messages = _bounded(messages, max_len)
    ids, spans = assistant_spans(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": ids, "labels": labels}


def tokenize_examples(tokenizer, examples: list[dict], max_len: int | None = None) -> list[dict]:
    rows = [tokenize_chat(tokenizer, ex["messages"], max_len) for ex in examples]
    # A row whose answer was truncated away would contribute nothing but padding.
    return [r for r in rows if any(label != IGNORE_INDEX for label in r["labels"])]
