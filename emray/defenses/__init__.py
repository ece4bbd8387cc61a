"""Defenses against emergent misalignment, one per module, found through a registry."""

from __future__ import annotations

import importlib
import pkgutil

from emray.defenses.base import Defense, DefenseContext, register_defense, registry

_loaded = False


def _load_all() -> None:
    """Import every module in this package so each registers its defense (one defense a file)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
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


__all__ = ["Defense", "DefenseContext", "available_defenses", "build_defenses", "get_defense_class", "register_defense"]
