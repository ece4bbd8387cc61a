"""Hash primitives: the one hashing rule every key in emray uses, and the schema markers that say
what enters a key. Run, trial and stage keys are built from these in emray/identity.py.

A key must change exactly when a result could change. Three rules:
  * a config field that cannot change results (progress bars, judge concurrency, LM-head chunk
    sizes, thread counts, logging) is declared in its schema with ``Field(..., json_schema_extra=
    NOT_IDENTITY)`` and left out of every key (``identity_dict``);
  * a field that names a file or a local folder has the type ``DataPath`` (``DataPath | None``,
    ``list[DataPath]``): its *content* enters the key (``emray.data.paths.content_identity``) and
    ``--dry-run`` checks it exists, so an edited file is a new trial, never a stale cache hit. It is a
    type, not an opt-in marker, and tests/test_identity.py fails on a file-naming field typed ``str``;
  * every key is the full sha256 hex of canonical JSON (``sha256``); callers may shorten it for a
    folder name with ``short``, never hash again with other rules.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel

#: Schema marker: the field does not change results (left out of keys).
NOT_IDENTITY: dict[str, Any] = {"identity": False}


class _PathMark:
    """``Annotated`` metadata of ``DataPath``: the string names a file or a folder."""

    def __repr__(self) -> str:
        return "DataPath"


#: A config or defense field that names a file or folder a run reads (its content enters keys).
DataPath = Annotated[str, _PathMark()]


#: An optional config section (default None) that enters an identity only when it is set: adding such a
#: section to emray (the RL scenario's ``rl``) leaves every existing trial and stage key unchanged.
OPTIONAL_SECTION: dict[str, Any] = {"identity": "when_set"}

KEY_CHARS = 16  # folder names: 64 bits of the sha256 are plenty to tell trials apart


def sha256(obj: Any) -> str:
    """sha256 hex of bytes, a string, or anything JSON-serialisable (canonical: sorted keys)."""
    if isinstance(obj, bytes):
        data = obj
    elif isinstance(obj, str):
        data = obj.encode()
    else:
        data = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()


def short(key: str) -> str:
    return key[:KEY_CHARS]


_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file, memoised per (path, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
        _FILE_CACHE[memo] = h.hexdigest()
    return _FILE_CACHE[memo]


LARGE_FILE = 256 << 20


def sampled_sha256(path: Path, span: int = 1 << 20) -> str:
    """Size + first and last MiB: a 15 GB weights file changes these when it changes, in milliseconds."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(span))
        fh.seek(max(size - span, 0))
        h.update(fh.read(span))
    return h.hexdigest()


def dir_sha256(path: str | Path) -> str:
    """Content hash of every file under a folder (relative names and contents; hidden files skipped).

    Files over 256 MiB (model weights) are hashed by size and their first and last MiB.
    """
    root = Path(path)
    files = sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts)
    )
    return sha256(
        {
            str(f.relative_to(root)): sampled_sha256(f) if f.stat().st_size > LARGE_FILE else file_sha256(f)
            for f in files
        }
    )


def _field_extra(field) -> dict:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def is_identity_field(model_cls: type[BaseModel], name: str) -> bool:
    return _field_extra(model_cls.model_fields[name]).get("identity", True)


def is_path_type(annotation: Any) -> bool:
    """Whether a field's type is ``DataPath`` (also inside ``| None`` or ``list[...]``)."""
    if any(isinstance(m, _PathMark) for m in getattr(annotation, "__metadata__", ())):
        return True
    return get_origin(annotation) is not None and any(is_path_type(a) for a in get_args(annotation))


def path_fields(model_cls: type[BaseModel]) -> list[str]:
    """Names of the fields of ``model_cls`` typed ``DataPath`` (files or folders a run reads)."""
    return [name for name, f in model_cls.model_fields.items() if _declares_path(f)]


def _declares_path(field) -> bool:
    # pydantic keeps Annotated metadata of a bare ``DataPath`` field in ``field.metadata``
    return is_path_type(field.annotation) or any(isinstance(m, _PathMark) for m in field.metadata)


def identity_dict(model: BaseModel) -> dict:
    """``model`` as JSON-ready data without its NOT_IDENTITY fields (recursively), keyed by alias."""
    out = {}
    for name, field in type(model).model_fields.items():
        identity = _field_extra(field).get("identity", True)
        value = getattr(model, name)
        if not identity or (identity == "when_set" and value is None):
            continue
        out[field.alias or name] = _identity_value(value)
    return out


def _identity_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return identity_dict(value)
    if isinstance(value, (list, tuple)):
        return [_identity_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _identity_value(v) for k, v in value.items()}
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def paths_of(model: BaseModel) -> list[str]:
    """Every path value in ``model`` (DataPath fields, recursively), in field order."""
    out: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if _declares_path(field):
            out += [str(v) for v in (value if isinstance(value, list) else [value]) if v]
        elif isinstance(value, BaseModel):
            out += paths_of(value)
        elif isinstance(value, list):
            out += [p for v in value if isinstance(v, BaseModel) for p in paths_of(v)]
    return out
