"""Defenses against emergent misalignment, one per module, found through a registry."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from emray.defenses.base import (
    SELECTION_ARTIFACT,
    Defense,
    DefenseContext,
    register_defense,
    registry,
)

_loaded = False
#: modules of this package that define no defense (the interface, the loss-lever plumbing, a mixin)
_NOT_DEFENSES = {"base", "losses", "safe_source"}


def _load_all() -> None:
    """Import every module in this package so each registers its defense (one defense a file)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_DEFENSES:
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def available_defenses() -> list[str]:
    _load_all()
    return sorted(["none", *registry()])


def get_defense_class(name: str, where: str = "defense") -> type[Defense]:
    _load_all()
    if name == "none":
        return NoDefense
    try:
        return registry()[name]
    except KeyError:
        raise ValueError(f"{where}: unknown defense {name!r}; available: {', '.join(available_defenses())}") from None


def build_defenses(specs, context: DefenseContext | None = None) -> list[Defense]:
    """Instantiate the run config's ``defenses`` list (DefenseSpec items) in order."""
    return [get_defense_class(s.name)(s.params, context) for s in specs if s.name != "none"]


class NoDefense(Defense):
    name = "none"


def selection_defenses() -> list[str]:
    """The registered defenses whose stage is a safe-data selection (Interleaving+ and its family)."""
    return [n for n in available_defenses() if get_defense_class(n).stage_name == SELECTION_ARTIFACT]


def selection_class(defense_name: str):
    cls = get_defense_class(defense_name)
    if cls.stage_name != SELECTION_ARTIFACT:
        raise ValueError(
            f"defense {defense_name!r} does not select safe data by score (use one of {', '.join(selection_defenses())})"
        )
    return cls


def selection_params(defense_name: str, params: Any = None):
    cls = selection_class(defense_name)
    if params is None or isinstance(params, dict):
        return cls.Params.model_validate(params or {})
    return params


__all__ = ["Defense", "DefenseContext", "available_defenses", "build_defenses", "get_defense_class", "register_defense"]
