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
