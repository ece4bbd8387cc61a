"""Write a model + tokenizer folder atomically, so a killed build never leaves a half checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path


def save_atomically(model, tokenizer, out_dir: Path) -> Path:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
