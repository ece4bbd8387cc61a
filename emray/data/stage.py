"""``emray data stage``: put a sweep's data and question files on the shared storage, checked.

A stage spec lists items; each is copied from a local file (or fetched from the Hugging Face hub
with ``hf:<dataset id>``), loaded with the same loader a sweep will use (so a malformed row fails
here, naming file:line, not hours into a cluster run), written under ``dest`` in the layout the
cluster sweeps read, and recorded in ``dest/manifest.json`` with its row count and sha256.

```yaml
items:
  - {name: code, kind: chat, source: /path/to/insecure.jsonl}              # -> data/code.jsonl
  - {name: wildguard_benign, kind: safe_pool, source: "hf:allenai/wildguardmix", config: wildguardtrain, split: train}
  - {name: general, kind: questions, source: /path/to/first_plot_questions.yaml}   # -> questions/general.yaml
  - {name: opswap_test, kind: opswap, source: "generate:test"}            # -> data/opswap_test.jsonl
  - {name: evil_extract, kind: persona, source: /path/to/evil_extract.json}   # -> persona/evil_extract.json
```
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from emray.configio import Strict

#: kind -> (folder under dest, file suffix)
LAYOUT = {
    "chat": ("data", ".jsonl"),
    "safe_pool": ("data", ".jsonl"),
    "opswap": ("data", ".jsonl"),
    "questions": ("questions", ".yaml"),
    "persona": ("persona", ".json"),
}


class StageItem(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["chat", "safe_pool", "questions", "persona", "opswap"]
    source: str  # a local path, hf:<dataset id>, or generate:<split> for opswap
    config: str | None = None  # hub dataset config name
    split: str = "train"
    limit: int | None = Field(None, gt=0)


class StageSpec(Strict):
    dest: str | None = None
    items: list[StageItem]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hub_rows(item: StageItem) -> list[dict]:
    from datasets import load_dataset

    data = load_dataset(item.source.removeprefix("hf:"), item.config, split=item.split)
    return [dict(row) for row in (data.select(range(min(item.limit, len(data)))) if item.limit else data)]


def _stage_chat(item: StageItem, target: Path) -> int:
    from emray.data.chat import load_chat_jsonl, parse_rows, write_chat_jsonl

    safe = item.kind == "safe_pool"
    if item.kind == "opswap":
        from emray.benign.opswap import examples

        split = item.source.removeprefix("generate:")
        if not item.source.startswith("generate:") or split not in ("train", "test"):
            raise ValueError(f"{item.name}: opswap source must be generate:train or generate:test, got {item.source!r}")
        rows = examples(split)
    elif item.source.startswith("hf:"):
        lines = [json.dumps(r, default=str) for r in _hub_rows(item)]
        rows = parse_rows(lines, item.source, keep_unharmful_only=safe)
    else:
        rows = load_chat_jsonl(item.source, keep_unharmful_only=safe, limit=item.limit)
    if not rows:
        raise ValueError(f"{item.name}: {item.source} has no usable rows")
    write_chat_jsonl(target, rows)
    load_chat_jsonl(target)  # the written file reads back as the sweep will read it
    return len(rows)


def _stage_file(item: StageItem, target: Path) -> int:
    if item.source.startswith("hf:"):
        raise ValueError(f"{item.name}: {item.kind} files are copied from a local path, not fetched from the hub")
    source = Path(item.source)
    if item.kind == "questions":
        from emray.data.questions import load_questions

        count = len(load_questions(source))
    else:
        prompts = json.loads(source.read_text())
        missing = {"instruction", "questions"} - set(prompts)
        if missing:
            raise ValueError(f"{source}: persona prompts lack {sorted(missing)}")
        count = len(prompts["questions"])
    shutil.copyfile(source, target)
    return count


def relative_path(item: StageItem) -> str:
    folder, suffix = LAYOUT[item.kind]
    return f"{folder}/{item.name}{suffix}"


def stage(spec: StageSpec, dest: str | Path | None = None) -> dict:
    """Stage every item under ``dest``; returns (and writes) the manifest."""
    root = Path(dest or spec.dest or "")
    if not str(root):
        raise ValueError("no destination: give --dest or `dest:` in the stage spec")
    names = [relative_path(i) for i in spec.items]
    if len(set(names)) != len(names):
        raise ValueError(f"two stage items write the same file: {sorted({n for n in names if names.count(n) > 1})}")
    manifest: dict[str, Any] = {"dest": str(root.resolve()), "items": {}}
    for item in spec.items:
        target = root / relative_path(item)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        try:
            count = (_stage_chat if item.kind in ("chat", "safe_pool", "opswap") else _stage_file)(item, tmp)
            tmp.replace(target)  # atomic: a failed stage never leaves a half file where a sweep looks
        finally:
            tmp.unlink(missing_ok=True)
        manifest["items"][relative_path(item)] = {
            "kind": item.kind,
            "path": str(target.resolve()),
            "source": item.source,
            "rows": count,
            "sha256": _sha256(target),
        }
        print(
            f"[emray] staged {item.name}: {count} {'questions' if item.kind == 'questions' else 'rows'} -> {target}",
            flush=True,
        )
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def missing_paths(manifest: dict, paths: list[str]) -> list[str]:
    """The paths a sweep reads that the manifest does not provide."""
    staged = {item["path"] for item in manifest["items"].values()}
    return [p for p in paths if str(Path(p).resolve()) not in staged]
