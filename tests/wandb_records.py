"""Reads an offline W&B run file (``run-<id>.wandb``: a LevelDB-style log of ``Record`` protobufs) in
tests, to count what a run holds: history rows, their keys and steps."""

from __future__ import annotations

import json
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7  # ":W&B", a 2-byte magic, a version byte
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        else:
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        yield record


def history(path: Path) -> list[dict]:
    """The run file's history rows as dicts (``_step`` included)."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def run_files(wandb_dir: Path) -> dict[str, list[Path]]:
    """Run id -> its offline run files (a resumed run has one folder per resumption)."""
    out: dict[str, list[Path]] = {}
    for path in sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb")):
        out.setdefault(path.stem[len("run-") :], []).append(path)
    return out
