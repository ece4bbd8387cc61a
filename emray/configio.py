"""YAML in, typed config out, with errors that name the file, the key path and the line.

Every config in emray (run config, sweep spec) is a pydantic model with ``extra="forbid"``; this
module is the one place that turns a YAML file plus ``--set key=value`` overrides into such a model,
and turns pydantic's errors into one message a user can act on.
"""

from __future__ import annotations

import errno
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    # allow_inf_nan=False: an inf or NaN coefficient (λ, α, a fraction) makes an arm infinite or a no-op.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, key path and line."""


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map every key path of a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            lines.update(_key_lines(value_node, path))
            lines[path] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_key_lines(item, prefix + (i,)))
    return lines


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    # pydantic may add non-key parts (e.g. a union branch name); fall back to the longest known prefix.
    for cut in range(len(loc), -1, -1):
        key = tuple(loc[:cut])
        if key in lines:
            return lines[key]
    return None


def read_text(
    path: str | Path, shown: str | Path | None = None, error: type[Exception] = ConfigError, what: str = "file"
) -> str:
    """A text file's UTF-8 content; ``error`` names ``shown`` (default: the path) for a missing file,
    a directory, a symlink loop or broken link, an unreadable file, and a byte that is not UTF-8 (with
    its line and column)."""
    path = Path(path)
    shown = path if shown is None else shown
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise error(f"{shown}: is a directory, expected a {what}") from None
    except FileNotFoundError:
        if path.is_symlink():
            raise error(f"{shown}: a broken symlink (its target {os.readlink(path)} does not exist)") from None
        raise error(f"{shown}: no such {what}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise error(f"{shown}: a symlink loop, expected a {what}") from None
        raise error(f"{shown}: cannot read the {what}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise error(
            f"{shown}:{line}: byte 0x{data[err.start]:02x} at column {column} is not UTF-8 (save the file as UTF-8)"
        ) from None


def check_duplicate_keys(
    node: yaml.Node | None, source: str | Path, error: type[Exception] = ConfigError, prefix: tuple = ()
) -> None:
    """YAML lets a repeated key silently win; emray refuses it, naming both lines."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    raise error(
                        f"{source}:{line}: key '{format_loc(prefix + (key_node.value,))}': duplicate key "
                        f"(first at line {seen[key_node.value]}; YAML would silently keep the last)"
                    )
                seen[key_node.value] = line
            check_duplicate_keys(value_node, source, error, prefix + (getattr(key_node, "value", "?"),))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            check_duplicate_keys(item, source, error, prefix + (i,))


def read_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"{path}: no such config file")
    text = read_text(path, what="config file")
    try:
        node = yaml.compose(text)
        check_duplicate_keys(node, path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data, (_key_lines(node) if node is not None else {})


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=1e-3`` -> (["train", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for key in keys[:-1]:
            if not isinstance(node.setdefault(key, {}), dict):
                raise ConfigError(f"--set {item!r}: {key!r} is not a mapping")
            node = node[key]
        node[keys[-1]] = value
    return data


def validate(
    model: type[M],
    data: dict,
    source: str,
    lines: dict[tuple, int] | None = None,
    hint: Callable[[tuple], str | None] | None = None,
) -> M:
    """Validate ``data`` as ``model``; on failure raise ConfigError naming source, key path and line
    (and, for an unknown key, ``hint(loc)`` when it has one: "did you mean ...?")."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = e["loc"]
            line = _line_for(loc, lines or {})
            where = f"{source}:{line}" if line else source
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
                if hint is not None and (suggestion := hint(tuple(loc))):
                    msg += f" ({suggestion})"
            problems.append(f"{where}: key '{format_loc(loc)}': {msg}")
        raise ConfigError("invalid config\n  " + "\n  ".join(problems)) from None


def has_key_path(model: type[BaseModel], keys: tuple) -> bool:
    """Whether ``model`` has the nested key ``keys`` (through sub-models, optional ones included)."""
    for i, key in enumerate(keys):
        field = model.model_fields.get(str(key))
        if field is None:
            return False
        if i == len(keys) - 1:
            return True
        annotation = field.annotation
        options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
        sub = [o for o in options if isinstance(o, type) and issubclass(o, BaseModel)]
        if not sub:
            return False
        model = sub[0]
    return False


def load_config(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    data, lines = read_yaml(path)
    data = apply_overrides(data, overrides)
    return validate(model, data, str(path), lines)


def dump_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)
