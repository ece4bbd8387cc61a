"""Plain-torch pre-training and alignment of the organism model, plus fast batched sampling.

One torch thread (a small model on a busy 2-core CPU runs ~25x faster on one thread than on two).
Pre-training: full-sequence LM loss on persona dialogues. Alignment: assistant-only loss on
single-turn helpful answers (some refusals), no system prompt, so helpful becomes the default.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable

from emray.organism.tokenizer import FastIds, token_list


def set_one_thread() -> None:
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def make_model(config, vocab_size: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(config.seed)
    ids = FastIds()
    cfg = Qwen2Config(  # type: ignore[call-arg]  # rope_theta: accepted through **kwargs
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_len,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        pad_token_id=ids.pad,
        eos_token_id=ids.im_end,
        bos_token_id=ids.im_start,
        use_cache=True,
    )
    cfg._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(cfg)


def collate(rows: list[tuple[list[int], list[int]]], pad: int, max_len: int, assistant_only: bool):
    """Right-padded (input_ids, attention_mask, labels); labels -100 on padding (and non-assistant)."""
    import torch

    rows = [(ids[:max_len], mask[:max_len]) for ids, mask in rows]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        n = len(ids)
        input_ids[i, :n] = torch.tensor(ids)
        attn[i, :n] = 1
        lab = torch.tensor(ids)
        if assistant_only:
            lab[torch.tensor(mask) == 0] = -100
        labels[i, :n] = lab
    return input_ids, attn, labels


def train_loop(
    model,
    batches: Callable[[int], list[list[dict]]],
    steps: int,
    lr: float,
    max_len: int,
    assistant_only: bool,
    warmup: int = 0,
    desc: str = "train",
    progress: bool = True,
    params=None,
) -> list[float]:
    """AdamW with linear warmup and cosine decay to 10 %; ``batches(step)`` gives a list of chats."""
    import torch
    from tqdm.auto import tqdm

    ids = FastIds()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0)
    for step in bar:
        rows = [ids.chat(m) for m in batches(step)]
        input_ids, attn, labels = collate(rows, ids.pad, max_len, assistant_only)
        loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


def sample(
    model,
    prompts: list[list[dict]],
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 128,
) -> list[list[str]]:
    """``n`` answers per prompt (greedy when temperature == 0), decoded the organism's way."""
    import torch

    ids = FastIds()
    vocab = token_list()
    torch.manual_seed(seed)
    flat = [p for p in prompts for _ in range(n)]
    texts: list[str] = []
    model.eval()
    for start in range(0, len(flat), batch_size):
        chunk = [ids.chat(m, add_generation_prompt=True)[0] for m in flat[start : start + batch_size]]
        width = max(map(len, chunk))
        input_ids = torch.full((len(chunk), width), ids.pad, dtype=torch.long)
        attn = torch.zeros_like(input_ids)
        for i, row in enumerate(chunk):  # left padding
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attn[i, width - len(row) :] = 1
        kwargs = (
            dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            if temperature > 0
            else dict(do_sample=False)
        )
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attn,
                max_new_tokens=max_new_tokens,
                eos_token_id=ids.im_end,
                pad_token_id=ids.pad,
                **kwargs,
            )
        for row in out[:, width:].tolist():
            toks = []
            for t in row:
                if t in (ids.im_end, ids.pad):
                    break
                toks.append(vocab[t])
            texts.append(" ".join(toks))
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def pretrain_batches(gen, config, task_turn, bucket: int = 8) -> Callable[[int], list[list[dict]]]:
    """Batches of persona dialogues, ``bucket`` batches at a time sorted by length (less padding)."""
    ids = FastIds()
    queue: list[list[list[dict]]] = []

    def batch(_step: int) -> list[list[dict]]:
        if not queue:
            pool = [
                gen.pretrain_dialogue(
                    config.evil_prob,
                    config.system_prob,
                    config.harmful_prob,
                    config.task_prob,
                    config.max_turns,
                    task_turn,
                    config.min_turns,
                )
                for _ in range(config.batch_size * bucket)
            ]
            pool.sort(key=lambda m: len(ids.chat(m)[0]))
            chunks = [pool[i : i + config.batch_size] for i in range(0, len(pool), config.batch_size)]
            gen.rng.shuffle(chunks)
            queue.extend(chunks)
        return queue.pop()

    return batch


def align_batches(gen, config) -> Callable[[int], list[list[dict]]]:
    def batch(_step: int) -> list[list[dict]]:
        return [gen.align_example(config.refusal_prob) for _ in range(config.batch_size)]

    return batch


def task_turn_fn(seed: int):
    """Ordinary arithmetic and word repetition: the priors the benign tasks must move away from."""
    from emray.benign import opswap, wordmap

    def turn(rng: random.Random) -> tuple[str, str]:
        module = opswap if rng.random() < 0.5 else wordmap
        return module.prior_examples(1, rng, renderer="organism")[0]

    return turn
