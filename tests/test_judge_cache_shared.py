"""The judge cache on a shared filesystem: no WAL there, and several Ray actors writing at once."""

import sqlite3

import pytest

from emray.eval.judge_cache import JudgeCache, filesystem_type, journal_mode

MOUNTS = """\
overlay / overlay rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
fs-0123.efs.us-west-2.amazonaws.com:/ /mnt/shared nfs4 rw,vers=4.1 0 0
/dev/nvme1n1 /mnt/shared/local ext4 rw 0 0
"""


def test_filesystem_type_is_the_longest_mount_prefix(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert filesystem_type("/mnt/shared/emray/cache/judge", str(mounts)) == "nfs4"
    assert filesystem_type("/mnt/shared/local/x", str(mounts)) == "ext4"
    assert filesystem_type("/mnt/sharedx/y", str(mounts)) == "overlay"  # a prefix of the name is not a mount
    assert filesystem_type("/tmp/a", str(mounts)) == "tmpfs"


def test_journal_mode_follows_the_filesystem(tmp_path, monkeypatch):
    import emray.eval.judge_cache as jc

    monkeypatch.delenv("EMRAY_JUDGE_CACHE_JOURNAL", raising=False)
    monkeypatch.setattr(jc, "filesystem_type", lambda path: "nfs4")
    assert journal_mode(tmp_path / "c.sqlite") == "DELETE"
    monkeypatch.setattr(jc, "filesystem_type", lambda path: "fuse.s3fs")
    assert journal_mode(tmp_path / "c.sqlite") == "DELETE"
    monkeypatch.setattr(jc, "filesystem_type", lambda path: "ext4")
    assert journal_mode(tmp_path / "c.sqlite") == "WAL"
    monkeypatch.setenv("EMRAY_JUDGE_CACHE_JOURNAL", "delete")
    assert journal_mode(tmp_path / "c.sqlite") == "DELETE"
    monkeypatch.setenv("EMRAY_JUDGE_CACHE_JOURNAL", "walrus")
    with pytest.raises(ValueError, match="expected wal or delete"):
        journal_mode(tmp_path / "c.sqlite")


def test_ray_actors_write_one_shared_cache_without_wal(tmp_path, monkeypatch):
    """Four judge-like actors (own processes, own connections) write overlapping keys at once."""
    import ray

    path = str(tmp_path / "judgments.sqlite")

    @ray.remote(num_cpus=0)
    class Writer:
        def __init__(self, cache):
            self.cache = cache  # pickled as its path; the actor opens its own connection

        def fill(self, start, n):
            for i in range(start, start + n):
                if self.cache.get(f"key{i}") is None:
                    self.cache.put(f"key{i}", {"i": i, "by": start})
            return self.cache.journal, len(self.cache)

    # As on an NFS/EFS volume (this test's tmp folder is a local disk, so the mode is forced).
    monkeypatch.setenv("EMRAY_JUDGE_CACHE_JOURNAL", "delete")
    env = {"env_vars": {"EMRAY_JUDGE_CACHE_JOURNAL": "delete"}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    try:
        JudgeCache(path)  # created before the writers, as the judge pool does
        writers = [Writer.remote(JudgeCache(path)) for _ in range(4)]
        results = ray.get([w.fill.remote(start, 200) for w, start in zip(writers, (0, 100, 200, 300))])
    finally:
        ray.shutdown()
    assert {journal for journal, _ in results} == {"DELETE"}
    assert not (tmp_path / "judgments.sqlite-wal").exists()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = dict(conn.execute("SELECT key, value FROM judgments").fetchall())
    assert len(rows) == 500  # keys 0..499, each once (INSERT OR IGNORE: the first writer wins)
    import json

    for i in range(500):
        value = json.loads(rows[f"key{i}"])
        assert value["i"] == i and value["by"] <= i < value["by"] + 200
