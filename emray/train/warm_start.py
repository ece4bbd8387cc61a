"""The RL scenario's warm start: an undefended EM SFT run through emray's one recipe, cached by content.

The warm start depends on the model, LoRA, ``data`` and ``train`` sections and the seed only: no
defense, nothing of the ``rl`` section. So every arm of a sweep shares one per seed, computed once as a
sweep stage (``WarmStartStage``, run by emray/sweep/runner.py before the trials) or, outside a sweep,
by the first run that needs it (a file lock keeps parallel workers from training it twice).
"""

from __future__ import annotations

from pathlib import Path

from emray.configio import Strict

ARTIFACT = "rl_warm_start"


def warm_start_config(config):
    """The SFT run the warm start is: ``config`` without its defenses and its ``rl`` section."""
    from emray.config import RunConfig

    data = config.model_dump(mode="json", by_alias=True)
    data.update(scenario="narrow", rl=None, benign=None, defenses=[], name=f"{config.name}-warm-start")
    return RunConfig.model_validate(data)


def warm_start_key(config) -> str:
    from emray.identity import trial_key

    return trial_key(warm_start_config(config))


def ensure_warm_start(config, progress: bool = True) -> Path:
    """The warm start's adapter folder (trained now when not cached)."""
    from filelock import FileLock

    from emray.cache_dirs import cache_subdir
    from emray.train.sft import run_sft

    warm = warm_start_config(config)
    out = cache_subdir("rl_warm_start", warm_start_key(config))
    adapter = out / "adapter"
    with FileLock(str(out) + ".lock"):
        if not ((adapter / "adapter_config.json").exists() and (out / "metrics.json").exists()):
            if progress:
                print(f"[emray] rl warm start: SFT on {warm.data.fine} -> {out}", flush=True)
            run_sft(warm, run_dir=out)
    return adapter


class WarmStartStage:
    """The warm start as a sweep stage (the runner's stage protocol, like a defense's stage)."""

    name = stage_name = ARTIFACT
    Params = Strict  # no hyperparameters of its own

    @classmethod
    def key(cls, config) -> str:
        return f"{ARTIFACT}:{warm_start_key(config)}"

    @classmethod
    def stage_description(cls, config, params: Strict) -> str:
        w = config.train
        n = f"{config.data.max_examples} rows of " if config.data.max_examples else ""
        length = f"{w.max_steps} steps" if w.max_steps > 0 else f"{w.epochs:g} epoch(s)"
        return f"rl warm start: SFT on {n}{config.data.fine}, {length}, seed {config.seed}"

    @classmethod
    def build_stage(cls, config, params: Strict) -> dict:
        return {ARTIFACT: str(ensure_warm_start(config))}
