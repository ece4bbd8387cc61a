"""LDIFS: keep the trained model's features close to the reference model's.

L = CE + λ · D, with D the squared ℓ2 distance between the concatenated residual-stream features
φ_θ(x) and φ_ref(x) of ``num_layers`` evenly spaced decoder layers (reference = the same model with
the LoRA adapter disabled, run without grad; gradients flow through φ_θ only).

Layers: with L decoder blocks and k = min(num_layers, L), the features are ``hidden_states[j]`` for
j = round(i·L/k), i = 1..k — the outputs of blocks j−1, always including the last block (whose
entry transformers replaces by the final-normed state the LM head reads). E.g. L=28, k=5:
j = 6, 11, 17, 22, 28. The embeddings (j=0) are never used: LoRA does not change them.

Normalisation: D = mean over tokens t of ‖φ_θ(x)_t − φ_ref(x)_t‖² / (k·d), i.e. the mean squared
error per feature coordinate, so λ does not scale with depth or width. ``tokens: all`` (default)
averages over every non-padding token — prompt and answer — because LDIFS preserves the features of
the *inputs* the model sees, and the prompt's representation (e.g. of a question about one's wishes)
drifts under narrow fine-tuning too; ``tokens: answer`` restricts it to answer tokens (useful for
models with huge attention-sink activations on the first token, which can dominate the mean).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from emray.configio import Strict
from emray.defenses.base import Defense, register_defense

if TYPE_CHECKING:  # torch is imported lazily: config validation imports every defense
    import torch


class LDIFSParams(Strict):
    lam: float = Field(1.0, alias="lambda", ge=0)
    num_layers: int = Field(5, gt=0)
    tokens: Literal["all", "answer"] = "all"


def evenly_spaced_layers(total: int, k: int) -> list[int]:
    """``hidden_states`` indices of k evenly spaced block outputs out of ``total``, ending at the last."""
    k = min(k, total)
    return sorted({round(i * total / k) for i in range(1, k + 1)})


def feature_distance(policy: "list[torch.Tensor]", reference: "list[torch.Tensor]", mask: "torch.Tensor") -> "torch.Tensor":
    """Mean over masked tokens of Σ_layers ‖Δ‖² / (layers · d), in float32."""
    import torch

    total = policy[0].new_zeros((), dtype=torch.float32)
    for pol, ref in zip(policy, reference):
        diff = pol[mask].float() - ref[mask].float()
        total = total + diff.pow(2).sum()
    count = max(int(mask.sum()), 1) * len(policy) * policy[0].shape[-1]
    return total / count


@register_defense
class LDIFS(Defense):
    name = "ldifs"
    Params = LDIFSParams
    needs = frozenset({"hidden_states", "reference_hidden_states"})

    def hidden_layers(self, model) -> list[int]:
        from emray.train.losses import num_decoder_layers

        return evenly_spaced_layers(num_decoder_layers(model), self.params.num_layers)

    def loss(self, batch):
        layers = self.hidden_layers(batch.model)
        mask = batch.token_mask if self.params.tokens == "all" else batch.answer_token_mask
        policy = [batch.hidden(i) for i in layers]
        reference = [batch.reference_hidden(i) for i in layers]
        return {"ldifs": self.params.lam * feature_distance(policy, reference, mask)}
