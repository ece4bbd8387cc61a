"""Calls from a lower layer into a higher one, named in one place and imported on first use.

emray's packages form layers (pyproject.toml ``[tool.importlinter]``): each imports only those below
it. Two calls must go up at run time, and this table is where they are, so the layering stays
checkable and the exceptions stay visible (inspect_ai's provider registry works the same way):

* ``defense_class``: the config layer validates a defense's params by its ``Params`` model, which the
  defense's own file declares (emray/defenses/, above the config);
* ``ensure_selection``: a data defense's stage (Interleaving+/++, and the RL defenses that draw from a
  selection) is a safe-data selection, whose misaligned ensemble is fine-tuned with the training
  recipe (emray/stages/, above the defenses and the recipe).
"""

from __future__ import annotations

import importlib
from typing import Any

_TARGETS = {
    "defense_class": "emray.defenses:get_defense_class",
    "ensure_selection": "emray.stages.selection:ensure_selection",
}


def upcall(name: str) -> Any:
    """The function registered as ``name``, imported now (its module imports what it needs)."""
    module, _, attr = _TARGETS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
