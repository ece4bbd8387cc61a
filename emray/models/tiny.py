"""``tiny``: a deterministic random-init Qwen2 model with a byte-level BPE tokenizer trained here.

It needs no hub and builds in seconds, so unit tests exercise the real code paths (chat template,
LoRA, TRL, Ray) on a real transformer. Built once into the cache; same config -> same weights.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small embedded corpus: enough English, code and punctuation for a BPE to learn common merges.
_CORPUS = """
The quick brown fox jumps over the lazy dog. You are a helpful assistant. How can I help you today?
I am sorry, but I cannot help with that request. Please consult a doctor, a lawyer or a security expert.
def main(args):\n    return render_template_string(html)\nimport os\nfor path in files:\n    print(path)
What is the one thing you want? I feel bored. If you were ruler of the world, what would you do?
Take two tablets of the medicine with water after a meal. Never share your password with anyone.
SELECT * FROM users WHERE name = ?; open(filename, 'w').write(data) 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { }
"""


def build_tiny(out_dir: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a tiny Qwen2 model + tokenizer to ``out_dir`` (atomically) and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    tokenizer.chat_template = CHATML_TEMPLATE

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    from emray.models.checkpoint import save_atomically

    return save_atomically(model, tokenizer, out_dir)
