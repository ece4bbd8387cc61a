"""Two stages that score the same pool at once score it once (the rehearsal's interleave_plus and
interleave_pp, docs/cluster.md item 4): the second waits on the first's file lock, then reads its
scores.jsonl. Two threads stand for the two stage processes (the lock is an OS file lock either way)."""

from __future__ import annotations

import json
import threading

from conftest import make_run_config


def test_two_concurrent_scorings_of_one_pool_score_it_once(tmp_path, monkeypatch):
    from emray.stages import selection

    monkeypatch.setenv("EMRAY_CACHE", str(tmp_path / "cache"))
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(6)
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_run_config(tmp_path, data={"safe_pool": str(pool)})
    monkeypatch.setattr(selection, "SCORED", [])
    results: list = []
    start = threading.Barrier(2)

    def stage():
        start.wait()
        results.append(selection.ensure_pool_scores(cfg, None, [], workers=0, progress=False))

    threads = [threading.Thread(target=stage) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 2 and results[0] == results[1]
    assert selection.SCORED == [["aligned"]], selection.SCORED  # one scoring, not two
    assert len(results[0].read_text().splitlines()) == len(rows)
