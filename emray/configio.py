"""YAML in, typed config out, with errors that name the file, the key path and the line.

Every config in emray (run config, sweep spec) is a pydantic model with ``extra="forbid"``; this
module is the one place that turns a YAML file plus ``--set key=value`` overrides into such a model,
and turns pydantic's errors into one message a user can act on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


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


def read_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text()
    try:
        node = yaml.compose(text)
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


def validate(model: type[M], data: dict, source: str, lines: dict[tuple, int] | None = None) -> M:
    """Validate ``data`` as ``model``; on failure raise ConfigError naming source, key path and line."""
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
            problems.append(f"{where}: key '{format_loc(loc)}': {msg}")
        raise ConfigError("invalid config\n  " + "\n  ".join(problems)) from None


def load_config(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    data, lines = read_yaml(path)
    data = apply_overrides(data, overrides)
    return validate(model, data, str(path), lines)


def dump_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)
