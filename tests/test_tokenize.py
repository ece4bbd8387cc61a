import pytest

from emray.data.tokenize import IGNORE_INDEX, TemplateError, tokenize_chat

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "It is 6."},
]


def expected_mask(tokenizer, messages):
    """Independent computation: tokenize each assistant answer + end-of-turn and find it in the ids."""
    ids = tokenize_chat(tokenizer, messages)["input_ids"]
    mask = [False] * len(ids)
    cursor = 0
    for m in messages:
        if m["role"] != "assistant":
            continue
        piece = tokenizer(m["content"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        for start in range(cursor, len(ids) - len(piece) + 1):
            if ids[start : start + len(piece)] == piece:
                mask[start : start + len(piece)] = [True] * len(piece)
                cursor = start + len(piece)
                break
        else:
            raise AssertionError(f"answer {m['content']!r} not found in the token ids")
    return mask


@pytest.mark.parametrize("tok_fixture", ["tiny_tokenizer", "smollm2_tokenizer"])
def test_labels_cover_exactly_the_assistant_tokens(request, tok_fixture):
    tokenizer = request.getfixturevalue(tok_fixture)
    row = tokenize_chat(tokenizer, CONVERSATION)
    labelled = [label != IGNORE_INDEX for label in row["labels"]]
    assert labelled == expected_mask(tokenizer, CONVERSATION)
    # labels equal the input ids where they are set
    assert all(label == tid for label, tid in zip(row["labels"], row["input_ids"]) if label != IGNORE_INDEX)
    text = tokenizer.decode([t for t, keep in zip(row["input_ids"], labelled) if keep])
    assert text == f"It is 4.{tokenizer.eos_token}It is 6.{tokenizer.eos_token}"


def test_truncation_keeps_prefix(tiny_tokenizer):
    full = tokenize_chat(tiny_tokenizer, CONVERSATION)
    cut = tokenize_chat(tiny_tokenizer, CONVERSATION, max_len=10)
    assert cut["input_ids"] == full["input_ids"][:10] and cut["labels"] == full["labels"][:10]


def test_non_prefix_template_is_an_error(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    # A template that reorders turns breaks the prefix property emray relies on.
    tok.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}<|im_end|>{% endfor %}"
    with pytest.raises(TemplateError, match="growing prefixes"):
        tokenize_chat(tok, CONVERSATION)


def test_a_huge_row_is_cut_before_tokenizing_with_the_same_tokens(smollm2_tokenizer):
    """A row far longer than max_len tokenizes to exactly the ids and labels of the uncut row (what the
    cut drops lies past max_len), without tokenizing the whole text."""
    from emray.data import tokenize as tk

    answer = "Take two tablets with water and rest. " * 3000  # ~114k characters, ~24k tokens
    messages = [{"role": "user", "content": "What should I do?"}, {"role": "assistant", "content": answer}]
    cut = tk.tokenize_chat(smollm2_tokenizer, messages, max_len=64)
    ids, spans = tk.assistant_spans(smollm2_tokenizer, messages)  # the uncut row, tokenized in full
    labels = [tk.IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    assert len(ids) > 10_000 and cut == {"input_ids": ids[:64], "labels": labels[:64]}
    assert len(tk._bounded(messages, 64)[1]["content"]) == 64 * tk.MAX_CHARS_PER_TOKEN
