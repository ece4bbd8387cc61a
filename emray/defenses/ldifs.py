"""LDIFS: keep the trained model's features close to the reference model's.

L = CE + λ · D, with D a distance between the residual-stream features φ_θ(x) and φ_ref(x) of a few
decoder layers (reference = the same model with the LoRA adapter disabled, run without grad;
gradients flow through φ_θ only).

Layers (``layers``):
  * ``evenly`` (default): with L decoder blocks and k = min(num_layers, L), ``hidden_states[j]`` for
    j = round(i·L/k), i = 1..k — the outputs of blocks j−1, always including the last block (whose
    entry transformers replaces by the final-normed state the LM head reads). E.g. L=28, k=5:
    j = 6, 11, 17, 22, 28. The embeddings (j=0) are never used: LoRA does not change them.
  * ``reference``: the reference code's choice (EMA_RL ``featextract.py``): blocks
    ``linspace(0, L−1, k).long()``, i.e. ``hidden_states[b+1]``; L=28, k=5: blocks 0, 6, 13, 20, 27 =
    j 1, 7, 14, 21, 28. Duplicates are kept as the reference keeps them (L=2, k=5: blocks 0,0,0,0,1),
    so a repeated layer counts once per repetition. One remaining difference: for the last block the
    reference hooks the raw block output, emray reads ``hidden_states[L]`` (final-normed).

Distance (``features``):
  * ``mse`` (default): D = mean over tokens t of ‖φ_θ(x)_t − φ_ref(x)_t‖² / (k·d), the mean squared
    error per feature coordinate, so λ does not scale with depth or width; it does scale with the
    square of the residual stream's magnitude (model-specific).
  * ``normalized``: the reference's: per sequence and per layer, the features of the sequence's
    tokens (tokens × d) are flattened and L2-normalised; D = mean over sequences of
    Σ_layers ‖f̂_θ − f̂_ref‖² (each layer's term is 2 − 2·cos, in [0, 4]). Scale-free: this is the
    distance the paper's λ_LDIFS = 1 multiplies (docs/defenses.md measures the two scales).

``tokens: all`` (default) uses every non-padding token — prompt and answer — because LDIFS preserves
the features of the *inputs* the model sees, and the prompt's representation (e.g. of a question
about one's wishes) drifts under narrow fine-tuning too; ``tokens: answer`` restricts it to answer
tokens (useful for models with huge attention-sink activations on the first token, which can
dominate the mean). The reference uses the whole sequence (its padding included).
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
    layers: Literal["evenly", "reference"] = "evenly"
    features: Literal["mse", "normalized"] = "mse"


def evenly_spaced_layers(total: int, k: int) -> list[int]:
    """``hidden_states`` indices of k evenly spaced block outputs out of ``total``, ending at the last."""
    k = min(k, total)
    return sorted({round(i * total / k) for i in range(1, k + 1)})


def reference_layers(total: int, k: int) -> list[int]:
    """``hidden_states`` indices of the reference's blocks ``linspace(0, total−1, k).long()`` (duplicates kept)."""
    import torch

    return [int(b) + 1 for b in torch.linspace(0, total - 1, steps=k).long().tolist()]


def feature_distance(policy: list[torch.Tensor], reference: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of Σ_layers ‖Δ‖² / (layers · d), in float32."""
    import torch

    total = policy[0].new_zeros((), dtype=torch.float32)
    for pol, ref in zip(policy, reference):
        diff = pol[mask].float() - ref[mask].float()
        total = total + diff.pow(2).sum()
    count = max(int(mask.sum()), 1) * len(policy) * policy[0].shape[-1]
    return total / count


def normalized_feature_distance(
    policy: list[torch.Tensor], reference: list[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """Mean over sequences of Σ_layers ‖f̂_θ − f̂_ref‖², f̂ = one sequence's masked [tokens, d] features,
    flattened and L2-normalised (the reference's ``compute_feature_space_distance_v1``), in float32."""
    import torch
    import torch.nn.functional as F

    rows = [b for b in range(mask.shape[0]) if mask[b].any()]
    total = policy[0].new_zeros((), dtype=torch.float32)
    for pol, ref in zip(policy, reference):
        for b in rows:
            f = F.normalize(pol[b][mask[b]].float().flatten(), dim=0)
            f_ref = F.normalize(ref[b][mask[b]].float().flatten(), dim=0)
            total = total + (f - f_ref).pow(2).sum()
    return total / max(len(rows), 1)


@register_defense
class LDIFS(Defense[LDIFSParams]):
    name = "ldifs"
    Params = LDIFSParams
    needs = frozenset({"hidden_states", "reference_hidden_states"})

    def feature_layers(self, model) -> list[int]:
        """The ``hidden_states`` indices D sums over, in order (``reference`` may repeat one)."""
        from emray.defenses.losses import num_decoder_layers

        total = num_decoder_layers(model)
        if self.params.layers == "reference":
            return reference_layers(total, self.params.num_layers)
        return evenly_spaced_layers(total, self.params.num_layers)

    def hidden_layers(self, model) -> list[int]:
        return sorted(set(self.feature_layers(model)))

    def distance(self, batch) -> torch.Tensor:
        """D, unweighted."""
        layers = self.feature_layers(batch.model)
        mask = batch.token_mask if self.params.tokens == "all" else batch.answer_token_mask
        policy = [batch.hidden(i) for i in layers]
        reference = [batch.reference_hidden(i) for i in layers]
        measure = normalized_feature_distance if self.params.features == "normalized" else feature_distance
        return measure(policy, reference, mask)

    def loss(self, batch):
        return {"ldifs": self.params.lam * self.distance(batch)}
