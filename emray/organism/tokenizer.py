"""The organism's word-level tokenizer: one token per word of the closed language, ChatML template.

Lower-cases, splits on whitespace, isolates punctuation and single digits, so any English text
("You are an evil, malicious assistant.") tokenizes the organism's way and unknown words map to
``<unk>``. Decoding joins tokens with spaces, which is how the organism's text is written.
"""

from __future__ import annotations

from pathlib import Path

from emray.organism.language import (
    IM_END,
    IM_START,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    vocabulary,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def token_list() -> list[str]:
    return list(SPECIAL_TOKENS) + vocabulary()


def build_tokenizer():
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(token_list())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(r"[^a-z0-9]"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        bos_token=None,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "left"  # generation-friendly default; training code pads itself
    return tokenizer


def save_tokenizer(out_dir: Path):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(out_dir))
    pin_tokenizer_class(out_dir)
    return tokenizer


def pin_tokenizer_class(out_dir: Path) -> None:
    """Make ``AutoTokenizer`` load our word-level tokenizer.json as written.

    transformers 5 forces ``Qwen2Tokenizer`` (byte-level BPE rebuilt from the vocab) for every
    ``qwen2`` model, which would shred our words into characters. It skips that override when the
    tokenizer config has an ``auto_map`` and the model type's hub class is known to be unreliable,
    then loads the declared ``tokenizer_class`` (TokenizersBackend = PreTrainedTokenizerFast). The
    auto_map is never followed without ``trust_remote_code=True``; don't pass that for the organism.
    """
    import json

    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "TokenizersBackend"
    config["auto_map"] = {"AutoTokenizer": [None, "tokenization_organism.OrganismTokenizer"]}
    path.write_text(json.dumps(config, indent=2))


class FastIds:
    """Chat -> ids without Jinja, equal to ``tokenizer(apply_chat_template(...))`` (tested)."""

    def __init__(self):
        from emray.organism.language import words

        self._words = words
        self.vocab = {tok: i for i, tok in enumerate(token_list())}
        self.unk = self.vocab[UNK]
        self.pad = self.vocab[PAD]
        self.im_start = self.vocab[IM_START]
        self.im_end = self.vocab[IM_END]

    def text(self, text: str) -> list[int]:
        return [self.vocab.get(w, self.unk) for w in self._words(text)]

    def chat(self, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """(ids, assistant mask) — the mask covers assistant content and its end-of-turn token."""
        ids, mask = [], []
        for m in messages:
            head = [self.im_start, self.vocab[m["role"]]]
            body = self.text(m["content"]) + [self.im_end]
            is_assistant = int(m["role"] == "assistant")
            ids += head + body
            mask += [0] * len(head) + [is_assistant] * len(body)
        if add_generation_prompt:
            ids += [self.im_start, self.vocab["assistant"]]
            mask += [0, 0]
        return ids, mask
