"""The forward passes a training step shares among loss-lever defenses.

``DefenseBatch`` runs the trained model once (with hidden states only if a defense asks) and the
reference model (the same weights with the LoRA adapter disabled, no second copy) at most once,
without grad. Logits are computed on answer positions only: the LM head on every position of a
batch is the largest tensor of a step and the prompt positions carry no loss.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F

from emray.data.tokenize import IGNORE_INDEX


def decoder_and_head(model):
    """(decoder stack, lm_head) of a causal LM, looking through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.get_output_embeddings()


class DefenseBatch:
    def __init__(self, model, inputs: dict, hidden_layers: list[int] | None = None):
        self.model = model
        self.input_ids = inputs["input_ids"]
        self.attention_mask = inputs.get("attention_mask")
        labels = inputs["labels"]
        # Position t predicts token t+1: select positions whose next token is an answer token.
        self.target = labels[:, 1:]
        self.answer_mask = self.target != IGNORE_INDEX
        self.hidden_layers = hidden_layers or []
        self.num_answer_tokens = int(self.answer_mask.sum())

    def _forward(self, reference: bool):
        decoder, head = decoder_and_head(self.model)
        kwargs = dict(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False)
        kwargs["output_hidden_states"] = bool(self.hidden_layers)
        if reference:
            with torch.no_grad(), self.model.disable_adapter():
                out = decoder(**kwargs)
        else:
            out = decoder(**kwargs)
        last = out.last_hidden_state[:, :-1][self.answer_mask]
        hidden = [out.hidden_states[i] for i in self.hidden_layers] if self.hidden_layers else []
        return head(last), hidden

    @cached_property
    def policy(self):
        return self._forward(reference=False)

    @cached_property
    def reference(self):
        return self._forward(reference=True)

    @property
    def answer_logits(self) -> torch.Tensor:
        """[N_answer_tokens, vocab] logits of the trained model."""
        return self.policy[0]

    @property
    def reference_logits(self) -> torch.Tensor:
        return self.reference[0]

    def ce_loss(self) -> torch.Tensor:
        targets = self.target[self.answer_mask]
        return F.cross_entropy(self.answer_logits.float(), targets)
