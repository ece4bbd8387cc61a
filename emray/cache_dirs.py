"""Where emray keeps caches and runs.

Everything lives under one folder (``EMRAY_CACHE``, default ``./.emray_cache``) so tests and CI keep
every artifact inside the build tree and a re-run finds what an earlier run built.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = Path(os.environ.get("EMRAY_CACHE", Path.cwd() / ".emray_cache")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_subdir(*parts: str) -> Path:
    path = cache_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
