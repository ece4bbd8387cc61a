"""The misaligned ensemble for Interleaving+/++: LoRA adapters fine-tuned on EM data, without defenses.

Each entry of ``datasets`` is either an adapter folder (used as is) or a chat JSONL of narrow
misaligned data, from which emray trains the adapter itself with ``run_sft`` (the run config's
model, LoRA and training settings, no defenses). A trained adapter is cached by content: base model
identity + dataset bytes + LoRA and training settings + seed, so a new model needs nothing made by
hand, and a second call (or another sweep on the same model) trains nothing.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from emray.cache_dirs import cache_subdir
from emray.config import RunConfig
from emray.hashing import identity_dict, short
from emray.score.cache import file_hash, model_key, sha

#: adapters trained by this process (tests use it to prove a cache hit trains nothing)
TRAINED: list[Path] = []


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def ensemble_run_config(
    run_config: RunConfig, dataset: str, steps: int | None, max_examples: int | None, seed: int | None = None
) -> RunConfig:
    """The run config of one undefended misaligned fine-tune on ``dataset`` (``seed``: its training
    seed, None for the run's)."""
    data = run_config.data.model_copy(
        update={
            "fine": str(dataset),
            "safe_pool": None,
            "max_examples": max_examples if max_examples is not None else run_config.data.max_examples,
        }
    )
    train = run_config.train.model_copy(update={"max_steps": steps} if steps is not None else {})
    seed = run_config.seed if seed is None else seed
    return run_config.model_copy(
        update={"data": data, "train": train, "defenses": [], "seed": seed, "benign": None, "scenario": "narrow"}
    )


def ensemble_key(config: RunConfig) -> str:
    from emray.data.paths import resolve_data_path

    return short(
        sha(
            {
                "model": model_key(config.model),
                "data": file_hash(resolve_data_path(config.data.fine)),
                "max_examples": config.data.max_examples,
                "lora": identity_dict(config.lora),
                "train": identity_dict(config.train),  # the schema's NOT_IDENTITY fields (progress, threads) left out
                "seed": config.seed,
            }
        )
    )


def ensure_ensemble(
    run_config: RunConfig,
    datasets: Sequence[str | Path],
    steps: int | None = None,
    max_examples: int | None = None,
    progress: bool = True,
    seed: int | None = None,
) -> list[Path]:
    """Adapter folders, one per entry of ``datasets``; JSONL entries are trained once and cached."""
    from filelock import FileLock

    from emray.train.recipe import fine_tune

    if not datasets:
        raise ValueError("the misaligned ensemble needs at least one adapter folder or EM dataset")
    root = cache_subdir("ensemble")
    adapters = []
    for entry in datasets:
        if is_adapter_dir(entry):
            adapters.append(Path(entry))
            continue
        config = ensemble_run_config(run_config, str(entry), steps, max_examples, seed)
        key = ensemble_key(config)
        out = root / key
        with FileLock(str(root / f"{key}.lock")):
            if not is_adapter_dir(out / "adapter"):
                if progress:
                    print(f"  training misaligned adapter on {entry} -> {out}", file=sys.stderr, flush=True)
                tmp = root / f"{key}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                fine_tune(config.model_copy(update={"name": f"ensemble-{key}"}), run_dir=tmp)
                shutil.rmtree(tmp / "trainer", ignore_errors=True)
                tmp.rename(out)
                TRAINED.append(out)
            elif progress:
                print(f"  misaligned adapter for {entry}: cached {out}", file=sys.stderr, flush=True)
        adapters.append(out / "adapter")
    return adapters
