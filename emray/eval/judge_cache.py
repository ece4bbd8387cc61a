"""Persistent judge cache: sqlite, safe for many processes (Ray actors, trials) at once.

Journal mode follows the filesystem. On a local disk: WAL (readers never block the writer). On a
network filesystem (NFS/EFS, SMB, FUSE), where the judge actors of a cluster may sit on different
nodes: WAL cannot work (its index is shared memory, which does not cross hosts; sqlite.org/wal.html),
so the cache uses the rollback journal, whose file locks NFSv4/EFS do carry across hosts.
``EMRAY_JUDGE_CACHE_JOURNAL`` (wal | delete) overrides the choice.

Key = sha256 of (base_url, model, full messages, request parameters). The API key is never part of
the key or the value. A value is the judge's raw top logprobs (so the score rule can change without
re-judging) plus token usage. Writes are ``INSERT OR IGNORE``: two processes that judge the same
prompt race harmlessly, and the first answer stays.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from emray.cache_dirs import cache_subdir
from emray.hashing import sha256


def judge_cache_key(base_url: str, model: str, messages: list[dict], params: dict[str, Any]) -> str:
    payload = {"base_url": base_url.rstrip("/"), "model": model, "messages": messages, "params": params}
    return sha256(payload)  # emray.identity: the full hex of canonical JSON (unchanged keys: old caches still hit)


#: Filesystem types (from /proc/mounts) on which sqlite's WAL mode is unsafe.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "glusterfs", "9p", "efs")


def filesystem_type(path: Path, mounts_file: str = "/proc/mounts") -> str:
    """The type of the filesystem holding ``path`` (longest matching mount point), or "" if unknown."""
    try:
        mounts = Path(mounts_file).read_text().splitlines()
    except OSError:
        return ""
    target, best, fstype = str(Path(path).resolve()), "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


def journal_mode(path: Path) -> str:
    """``WAL`` on a local disk, ``DELETE`` (rollback journal) on a network filesystem."""
    forced = os.environ.get("EMRAY_JUDGE_CACHE_JOURNAL", "").strip().upper()
    if forced:
        if forced not in ("WAL", "DELETE"):
            raise ValueError(f"EMRAY_JUDGE_CACHE_JOURNAL={forced.lower()!r}: expected wal or delete")
        return forced
    fstype = filesystem_type(path.parent)
    return "DELETE" if fstype in NETWORK_FS or fstype.startswith("fuse") else "WAL"


def default_cache_path() -> Path:
    return cache_subdir("judge") / "judgments.sqlite"


class JudgeCache:
    """``get(key) -> dict | None`` and ``put(key, value)``; one connection per thread."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.journal = journal_mode(self.path)
        conn = self._conn()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )
        conn.commit()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            # busy_timeout first: switching the journal mode waits for other writers' locks.
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute(f"PRAGMA journal_mode={self.journal}")
            conn.execute("PRAGMA synchronous=" + ("NORMAL" if self.journal == "WAL" else "FULL"))
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict | None:
        row = self._conn().execute("SELECT value FROM judgments WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        self._conn().execute(
            "INSERT OR IGNORE INTO judgments (key, value, created) VALUES (?, ?, ?)",
            (key, json.dumps(value, ensure_ascii=False), time.time()),
        )

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # Pickling (Ray) carries the path only; each process opens its own connection.
    def __getstate__(self) -> dict:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])  # type: ignore[misc]  # unpickling: re-open the database
