"""One ``emray sweep`` per sweep folder: ``<sweep>/sweep.lock`` holds the running sweep's pid and host.

A second sweep (or ``--resume``) on the same folder, from this host or another one on shared
storage, refuses at once and names the holder. A lock whose process is gone (same host, dead pid, or
a pid reused by a younger process) is stale: it is taken over, with a message. A lock from another
host cannot be checked from here; it is removed by hand if that host is gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

LOCK_FILE = "sweep.lock"


class SweepLockError(RuntimeError):
    """The sweep folder is in use by another emray sweep (or its lock cannot be read)."""


def _process_started(pid: int) -> float | None:
    """The process's start time (epoch seconds) from /proc, None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def holder_alive(holder: dict) -> bool:
    """Whether the lock's process (on this host) still runs: its pid exists and is not younger than the lock."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started = _process_started(pid)
    since = holder.get("since")
    if started is not None and isinstance(since, (int, float)) and started > since + 2:
        return False  # the pid was reused by a process younger than the lock
    return True


def describe(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, since {when}"


class SweepLock:
    """``with SweepLock(sweep_dir):`` holds the folder for this process; raises SweepLockError when
    another live sweep holds it."""

    def __init__(self, sweep_dir: str | Path):
        self.path = Path(sweep_dir) / LOCK_FILE
        self.me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "nonce": uuid.uuid4().hex,
            "argv": sys.argv[1:],
        }
        self.held = False

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise SweepLockError(
                f"{self.path}: cannot read the sweep lock ({err}); if no emray sweep runs on "
                "this folder, remove the file"
            ) from None
        if not isinstance(holder, dict):
            raise SweepLockError(
                f"{self.path}: not a sweep lock; if no emray sweep runs on this folder, remove the file"
            )
        return holder

    def acquire(self) -> SweepLock:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{LOCK_FILE}.{self.me['nonce']}")
        tmp.write_text(json.dumps(self.me))
        try:
            # The guard serialises the check-and-take-over on this host; os.link is the atomic create
            # (also across hosts on shared storage): it fails when a lock exists.
            with FileLock(str(self.path.with_name(f".{LOCK_FILE}.guard")), timeout=30):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    holder = self._read()
                    if holder is None:  # removed between the two calls
                        os.link(tmp, self.path)
                    elif holder.get("host") != self.me["host"]:
                        raise SweepLockError(
                            f"{self.path.parent} is in use by another emray sweep ({describe(holder)}); wait for it to "
                            f"finish or stop it there. If that host is gone, remove {self.path}"
                        ) from None
                    elif holder_alive(holder):
                        raise SweepLockError(
                            f"{self.path.parent} is in use by another emray sweep ({describe(holder)}); wait for it to "
                            f"finish or stop it (kill {holder.get('pid')}), then run again"
                        ) from None
                    else:
                        print(
                            f"[emray] taking over the stale sweep lock {self.path} ({describe(holder)}: "
                            "that process is gone)",
                            file=sys.stderr,
                            flush=True,
                        )
                        os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self.held = True
        return self

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        if not self.held:
            return
        self.held = False
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(holder, dict) and holder.get("nonce") == self.me["nonce"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
