"""Load a model + tokenizer by name: an offline builtin (tiny, smollm2-135m, organism), a hub id or a path.

Builtins are built once into the cache (``emray.cache_dirs.cache_dir()/models/<name>``) and from then on
load like any local checkpoint, so every code path below the loader is the real one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emray.cache_dirs import cache_subdir
from emray.data.paths import content_identity
from emray.hashing import identity_dict

if TYPE_CHECKING:
    from emray.config import LoraConfig, ModelConfig

BUILTIN_MODELS = ("tiny", "smollm2-135m", "organism")


def _builtin_path(name: str) -> Path:
    from filelock import FileLock

    if name == "organism":
        from emray.data.paths import organism_config
        from emray.organism import ensure_built

        return ensure_built(organism_config()) / "model"
    root = cache_subdir("models")
    out = root / name
    # A lock so parallel Ray workers build a builtin once.
    with FileLock(str(root / f"{name}.lock")):
        if not (out / "config.json").exists():
            if name == "tiny":
                from emray.models.tiny import build_tiny

                build_tiny(out)
            else:
                from emray.models.smollm2 import build_smollm2

                build_smollm2(out)
    return out


def resolve_model_path(name: str) -> str:
    """A local folder for builtins and existing paths; the hub id unchanged otherwise."""
    if name in BUILTIN_MODELS:
        return str(_builtin_path(name))
    if name.startswith("organism:"):
        from emray.data.paths import resolve_data_path

        return str(resolve_data_path(name))
    return name


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def pick_dtype(requested: str, device: str):
    import torch

    if requested == "auto":
        # bf16 on GPU; fp32 on CPU, where bf16 matmuls are slow.
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, requested)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"model {name!r}: the tokenizer has no chat template; emray trains chat models only")
    return tokenizer


def load_model(
    cfg: ModelConfig, adapter: str | os.PathLike | None = None, device: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) for ``cfg``; with ``adapter`` the LoRA adapter is loaded on top (not merged)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg.name)
    device = device or pick_device(cfg.device)
    tokenizer = load_tokenizer(cfg.name)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=pick_dtype(cfg.dtype, device),
        attn_implementation=cfg.attn_implementation,
        revision=cfg.revision,
    )
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))  # type: ignore[assignment]  # a PeftModel wraps it
    return model.to(device), tokenizer  # type: ignore[arg-type]  # transformers' stub types .to(device) oddly


def lora_target_modules(model, wanted: list[str]) -> list[str]:
    """The requested projections that this architecture has (e.g. no gate_proj in GPT-2)."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [m for m in wanted if m in present]
    if not found:
        raise ValueError(f"none of the LoRA target modules {wanted} exist in this model")
    return found


def attach_lora(model, cfg: LoraConfig, seed: int | None = None):
    """Wrap ``model`` with a fresh rs-LoRA adapter (only the adapter weights are trainable).

    With ``seed`` torch's RNG is seeded just before the adapter's weights are drawn, so they depend on
    the seed alone: whatever the process did first (the organism world's first build in a Ray worker
    samples answers to measure it) cannot change a fine-tune."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int; a float alpha works and is in keys
        lora_dropout=cfg.dropout,
        use_rslora=cfg.rslora,
        target_modules=lora_target_modules(model, cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    if seed is not None:
        torch.manual_seed(seed)
    return get_peft_model(model, peft_cfg)


def model_identity(model_cfg) -> dict:
    """A ModelConfig's fields plus the content of a local model folder.

    Builtins are named, never built here (the organism by its world's config hash, ``tiny`` and
    ``smollm2-135m`` by name: the code defines them); a hub id is its name and revision.
    """
    data = identity_dict(model_cfg)
    name = model_cfg.name
    local = not name.startswith("organism") and name not in BUILTIN_MODELS and os.path.isdir(os.path.expanduser(name))
    data["content"] = content_identity(name) if local or name.startswith("organism") else name
    return data
