"""The forward passes a training step shares among loss-lever defenses.

``DefenseBatch`` runs the trained model once (with the hidden states the defenses ask for) and the
reference model (the same weights with the LoRA adapter disabled, no second copy) at most once,
without grad. Both forwards go through the model's own ``forward`` (so DDP / DeepSpeed wrappers see
them) with ``logits_to_keep=1``: the LM head is applied here, on answer positions only, in chunks
of ``chunk_tokens`` tokens. Full-vocabulary logits of a whole batch (the largest tensor of a step)
are never built: each chunk's float32 log-softmax is computed, its gradient with respect to the
chunk's hidden states taken at once, and the logits freed (``_HeadLosses``). The backward pass then
only multiplies the stored ``[N, hidden]`` gradients by the upstream scalars.
"""

from __future__ import annotations

import contextlib
import contextvars
from functools import cached_property

import torch
import torch.nn.functional as F

from emray.data.tokenize import IGNORE_INDEX

DEFAULT_CHUNK_TOKENS = 1024


@contextlib.contextmanager
def _scoped(var: contextvars.ContextVar, value):
    """``var`` set to ``value`` inside the block, restored after it."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


_REFERENCE_PASS = contextvars.ContextVar("emray_reference_pass", default=False)


def in_reference_pass() -> bool:
    """True inside the reference forward; training-only hooks (persona steering) skip it."""
    return _REFERENCE_PASS.get()


_ROLLOUT_PASS = contextvars.ContextVar("emray_rollout_pass", default=False)


def in_rollout() -> bool:
    """True while GRPO generates and scores completions (emray/train/grpo.py); training-only hooks skip it."""
    return _ROLLOUT_PASS.get()


def rollout_pass():
    return _scoped(_ROLLOUT_PASS, True)


_STEERED_POSITIONS = contextvars.ContextVar("emray_steered_positions", default=None)


def steering_positions(mask: torch.Tensor):
    """The [B, T] positions persona ``positions: completion`` steers in the forwards inside (GRPO's loss
    forward, emray/train/grpo.py). Gradient checkpointing does not re-run hooks in the backward pass
    (transformers checkpoints a layer's ``forward``, its hooks stay outside), so the forward is enough."""
    return _scoped(_STEERED_POSITIONS, mask)


def steered_positions() -> torch.Tensor | None:
    return _STEERED_POSITIONS.get()


def completion_predicting(prompt_mask: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """[B, P+C] bool: position t of ``cat(prompt, completion)`` is followed by a completion token
    (its output predicts one). The reference's ``mask[:, :-1] = label_mask[:, 1:]``."""
    follows = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1).bool()
    return torch.cat([follows[:, 1:], torch.zeros_like(follows[:, :1])], dim=1)


def reference_pass():
    return _scoped(_REFERENCE_PASS, True)


def unwrap(model):
    """The model inside DDP / DeepSpeed wrappers (they keep it as ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def base_causal_lm(model):
    """The transformers causal LM, looking through wrappers and peft."""
    model = unwrap(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_and_head(model):
    """(decoder stack, lm_head) of a causal LM, looking through a peft wrapper."""
    base = base_causal_lm(model)
    return base.model, base.get_output_embeddings()


def num_decoder_layers(model) -> int:
    config = base_causal_lm(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.num_hidden_layers)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks; ``hidden_states[i]`` (i >= 1) is the output of block ``i - 1``."""
    return decoder_and_head(model)[0].layers


@contextlib.contextmanager
def adapter_disabled(model):
    peft = unwrap(model)
    if not hasattr(peft, "disable_adapter"):
        raise TypeError(
            "a reference forward needs a LoRA (peft) model: the reference is the model with the adapter disabled"
        )
    with peft.disable_adapter():
        yield peft


def _chunk_terms(head, hidden, ref_hidden, targets, direction):
    """Summed CE and KL of one chunk of answer tokens, in float32."""
    logp = F.log_softmax(head(hidden).float(), dim=-1)
    ce = -logp.gather(1, targets[:, None]).sum()
    if ref_hidden is None:
        return ce, None
    with torch.no_grad():
        ref_logp = F.log_softmax(head(ref_hidden).float(), dim=-1)
    if direction == "forward":  # KL(p_θ ‖ p_ref) = Σ_v p_θ (log p_θ − log p_ref)
        kl = (logp.exp() * (logp - ref_logp)).sum()
    else:  # KL(p_ref ‖ p_θ) = Σ_v p_ref (log p_ref − log p_θ)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum()
    return ce, kl


class _HeadLosses(torch.autograd.Function):
    """(Σ CE, Σ KL) over answer tokens, chunked; gradients w.r.t. the hidden states only.

    Each chunk's logits are built, reduced and freed inside ``forward``, which also stores the
    chunk's d(CE)/dh and d(KL)/dh; ``backward`` combines them with the upstream scalars. Valid
    when the LM head is frozen (LoRA); ``head_losses`` falls back to checkpointing otherwise.
    """

    @staticmethod
    def forward(ctx, hidden, ref_hidden, targets, head, direction, chunk):
        n = hidden.shape[0]
        with_kl = ref_hidden is not None
        grad_ce = torch.zeros_like(hidden)
        grad_kl = torch.zeros_like(hidden) if with_kl else None
        ce_total = hidden.new_zeros((), dtype=torch.float32)
        kl_total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            h = hidden[start:stop].detach().requires_grad_(True)
            ref = ref_hidden[start:stop] if with_kl else None
            with torch.enable_grad():
                ce, kl = _chunk_terms(head, h, ref, targets[start:stop], direction)
                (grad_ce[start:stop],) = torch.autograd.grad(ce, h, retain_graph=with_kl)
                if with_kl:
                    (grad_kl[start:stop],) = torch.autograd.grad(kl, h)
            ce_total += ce.detach()
            if with_kl:
                kl_total += kl.detach()
        ctx.save_for_backward(grad_ce, *([grad_kl] if with_kl else []))
        ctx.with_kl = with_kl
        return ce_total, kl_total

    @staticmethod
    def backward(ctx, g_ce, g_kl):
        saved = ctx.saved_tensors
        grad = saved[0] * g_ce.to(saved[0].dtype)
        if ctx.with_kl:
            grad = grad + saved[1] * g_kl.to(saved[1].dtype)
        return grad, None, None, None, None, None


def head_losses(head, hidden, ref_hidden, targets, direction="forward", chunk_tokens=DEFAULT_CHUNK_TOKENS):
    """(Σ CE, Σ KL) over the rows of ``hidden`` ([N, d]); KL is 0 when ``ref_hidden`` is None."""
    if direction not in ("forward", "reverse"):
        raise ValueError(f"KL direction must be 'forward' or 'reverse', not {direction!r}")
    if not any(p.requires_grad for p in head.parameters()):
        return _HeadLosses.apply(hidden, ref_hidden, targets, head, direction, chunk_tokens)
    # A trainable head (full fine-tuning, tied trainable embeddings): recompute each chunk in backward.
    from torch.utils.checkpoint import checkpoint

    ce_total = hidden.new_zeros((), dtype=torch.float32)
    kl_total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        ref = ref_hidden[sl] if ref_hidden is not None else None

        def terms(h, ref=ref, t=targets[sl]):
            ce, kl = _chunk_terms(head, h, ref, t, direction)
            return ce, (kl if kl is not None else ce.new_zeros(()))

        ce, kl = checkpoint(terms, hidden[sl], use_reentrant=False)
        ce_total, kl_total = ce_total + ce, kl_total + kl
    return ce_total, kl_total


class DefenseBatch:
    """One micro-batch's shared forwards. ``hidden_layers`` index ``output_hidden_states``."""

    def __init__(
        self, model, inputs: dict, hidden_layers: list[int] | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    ):
        self.model = model
        self.input_ids = inputs["input_ids"]
        self.attention_mask = inputs.get("attention_mask")
        labels = inputs["labels"]
        # Position t predicts token t+1: select positions whose next token is an answer token.
        self.target = labels[:, 1:]
        self.answer_mask = self.target != IGNORE_INDEX
        self.hidden_layers = sorted(set(hidden_layers or []))
        self.num_answer_tokens = int(self.answer_mask.sum())
        self.chunk_tokens = chunk_tokens
        self._head_terms: dict = {}
        self._other_kl: dict = {}

    @property
    def token_mask(self) -> torch.Tensor:
        """[B, T] bool: the non-padding tokens."""
        if self.attention_mask is None:
            return torch.ones_like(self.input_ids, dtype=torch.bool)
        return self.attention_mask.bool()

    @property
    def answer_token_mask(self) -> torch.Tensor:
        """[B, T] bool: the answer tokens themselves (labels != -100)."""
        mask = torch.zeros_like(self.input_ids, dtype=torch.bool)
        mask[:, 1:] = self.answer_mask
        return mask

    def _forward(self, reference: bool):
        last = num_decoder_layers(self.model)
        kwargs = dict(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            use_cache=False,
            output_hidden_states=sorted({*self.hidden_layers, last}),
            logits_to_keep=1,  # we apply the head ourselves, to answer positions only
        )
        if reference:
            with torch.no_grad(), reference_pass(), adapter_disabled(self.model) as peft:
                out = peft(**kwargs)
        else:
            out = self.model(**kwargs)
        # hidden_states[last] is the final (normed) state the LM head reads.
        final = out.hidden_states[last]
        hidden = {i: out.hidden_states[i] for i in self.hidden_layers}
        return final[:, :-1][self.answer_mask], hidden, final

    @cached_property
    def policy(self):
        return self._forward(reference=False)

    @cached_property
    def reference(self):
        return self._forward(reference=True)

    @property
    def answer_hidden(self) -> torch.Tensor:
        """[N_answer_tokens, d] final hidden states of the trained model at answer positions."""
        return self.policy[0]

    @property
    def reference_answer_hidden(self) -> torch.Tensor:
        return self.reference[0]

    def hidden(self, index: int) -> torch.Tensor:
        """[B, T, d] ``hidden_states[index]`` of the trained model (with grad)."""
        return self.policy[1][index]

    def reference_hidden(self, index: int) -> torch.Tensor:
        return self.reference[1][index]

    @property
    def answer_logits(self) -> torch.Tensor:
        """[N_answer_tokens, vocab] logits of the trained model (materialised: tests, small batches)."""
        return decoder_and_head(self.model)[1](self.answer_hidden)

    @property
    def reference_logits(self) -> torch.Tensor:
        return decoder_and_head(self.model)[1](self.reference_answer_hidden)

    def _answer_targets(self) -> torch.Tensor:
        return self.target[self.answer_mask]

    def _terms(self, kl_direction: str | None):
        """(mean CE, mean KL or None), computed in one chunked pass over the LM head."""
        if kl_direction not in self._head_terms:
            head = decoder_and_head(self.model)[1]
            ref = self.reference_answer_hidden if kl_direction else None
            ce, kl = head_losses(
                head, self.answer_hidden, ref, self._answer_targets(), kl_direction or "forward", self.chunk_tokens
            )
            n = max(self.num_answer_tokens, 1)
            self._head_terms[kl_direction] = (ce / n, kl / n if kl_direction else None)
        return self._head_terms[kl_direction]

    @property
    def other_positions(self) -> torch.Tensor:
        """[B, T] bool: the non-padding positions that do not predict an answer token (prompt, last)."""
        predicts_answer = torch.zeros_like(self.input_ids, dtype=torch.bool)
        predicts_answer[:, :-1] = self.answer_mask
        return self.token_mask & ~predicts_answer

    def _other_kl_sum(self, direction: str) -> tuple[torch.Tensor, int]:
        """(Σ KL over ``other_positions``, their count), chunked like the answer tokens."""
        if direction not in self._other_kl:
            mask = self.other_positions
            policy, reference = self.policy[2][mask], self.reference[2][mask]
            head = decoder_and_head(self.model)[1]
            dummy = torch.zeros(policy.shape[0], dtype=torch.long, device=policy.device)  # CE unused here
            _, kl = head_losses(head, policy, reference, dummy, direction, self.chunk_tokens)
            self._other_kl[direction] = (kl, int(mask.sum()))
        return self._other_kl[direction]

    def kl_loss(self, direction: str = "forward", tokens: str = "answer") -> torch.Tensor:
        """Mean of KL(p_θ ‖ p_ref) (forward) or KL(p_ref ‖ p_θ) (reverse) over the answer tokens, or
        (``tokens="sequence"``, the reference code's) over every non-padding position, prompt included."""
        answer_mean = self._terms(direction)[1]
        if tokens == "answer":
            return answer_mean
        if tokens != "sequence":
            raise ValueError(f"KL tokens must be 'answer' or 'sequence', not {tokens!r}")
        other_sum, n_other = self._other_kl_sum(direction)
        return (answer_mean * self.num_answer_tokens + other_sum) / max(self.num_answer_tokens + n_other, 1)

    def ce_loss(self) -> torch.Tensor:
        """Mean answer-token cross-entropy; reuses the pass a KL term already made."""
        for _direction, (ce, _) in self._head_terms.items():
            return ce
        return self._terms(None)[0]
