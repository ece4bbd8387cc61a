"""How many safe rows a selection needs (the rehearsal's "PoolTooSmall", docs/cluster.md item 2): k is
sized for the trial's largest fine-tune's data, not its ``max_steps``, because the trainer draws its
batches from the whole shuffled mixed set (docs/data_defenses.md "safe_fraction"). Cheap: the pool check
comes before the ensemble is trained."""

from __future__ import annotations

import json
import math

import pytest
from conftest import SHARED_DATA, make_run_config

from emray.score.select import PoolTooSmall


def test_k_is_sized_for_the_benign_data_whatever_its_max_steps(tmp_path):
    from emray.stages.selection import ensure_selection

    pool = tmp_path / "pool.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(3)
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    benign = tmp_path / "benign.jsonl"
    benign.write_text((SHARED_DATA / "train" / "code.jsonl").read_text())
    cfg = make_run_config(
        tmp_path,
        data={"safe_pool": str(pool)},
        benign={"train": [str(benign)], "test": [str(benign)], "max_steps": 1},
    )
    n_benign = sum(1 for line in benign.read_text().splitlines() if line.strip())  # every row: no max_examples
    k = math.floor(0.05 * n_benign / 0.95 + 0.5)
    with pytest.raises(PoolTooSmall) as err:
        ensure_selection(cfg, "interleave_plus", {"safe_fraction": 0.05}, progress=False)
    message = str(err.value)
    assert f"k = {k}: 0.05 of the trial's largest fine-tune, {n_benign} rows, whatever its max_steps" in message
    assert f"{k} safe samples needed, 3 available" in message
    # sized for the 1 step x 4 rows it reads, k would be 0: none of what the trainer reads would be safe
    assert math.floor(0.05 * 4 / 0.95 + 0.5) == 0
