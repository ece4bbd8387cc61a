"""Intermediate evaluations during a fine-tune, without touching the training: a TrainerCallback that, at a
few fractions of training, hands the model in training to a function (a sweep trial's early-stop probe,
emray/sweep/early_stop.py) inside an RNG fence.

Why the fence: sampling draws from torch's global generator (``HFGenerator`` seeds it per batch), and the
training's dropout and data order draw from the same generator; python's and numpy's generators too. The
probe runs inside ``torch.random.fork_rng`` with python's and numpy's state saved and restored, and the
model's train/eval mode restored, so the trained adapter is bit for bit the one trained without probes
(tests/test_early_stop.py compares them with ``torch.equal``). Persona steering's hook acts only in train
mode (emray/defenses/persona.py), so a probe, like the final evaluation, sees the unsteered model.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence


def probe_steps(fractions: Sequence[float], max_steps: int) -> dict[int, float]:
    """{optimizer step: fraction} for each fraction of ``max_steps`` (at least step 1; one probe per step)."""
    out: dict[int, float] = {}
    for fraction in sorted(fractions):
        out.setdefault(max(1, min(max_steps, round(fraction * max_steps))), fraction)
    return out


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class ProbeCallback(_callback_base()):  # type: ignore[misc]  # transformers imported on first use
    """Calls ``probe(step, total, fraction, model, tokenizer)`` after the optimizer steps that reach each
    fraction of training, with every random generator the training reads left as it was."""

    def __init__(self, fractions: Sequence[float], probe: Callable[..., None]):
        self.fractions = list(fractions)
        self.probe = probe
        self.steps: dict[int, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps = probe_steps(self.fractions, state.max_steps)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        fraction = self.steps.get(state.global_step)
        if fraction is None or model is None:
            return
        with rng_fence():
            was_training = model.training
            try:
                self.probe(state.global_step, state.max_steps, fraction, model, processing_class)
            finally:
                model.train(was_training)


class rng_fence:
    """Save torch's (CPU and CUDA), python's and numpy's global random state; restore it on exit."""

    def __enter__(self):
        import numpy as np
        import torch

        self._torch = torch.random.fork_rng(devices=list(range(torch.cuda.device_count())))
        self._torch.__enter__()
        self._python = random.getstate()
        self._numpy = np.random.get_state()
        return self

    def __exit__(self, *exc):
        import numpy as np

        random.setstate(self._python)
        np.random.set_state(self._numpy)
        return self._torch.__exit__(*exc)
