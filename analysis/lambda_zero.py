"""λ = 0 equivalence numbers for docs/sweeps.md: none vs kl(λ=0) vs ldifs(λ=0), grad_accum 4, tiny model (the setup of tests/test_lambda_zero.py). Run from the repo root."""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "tests")
from conftest import make_run_config
from safetensors.torch import load_file

from emray.train.sft import run_sft

TRAIN = {"max_steps": 3, "batch_size": 1, "grad_accum": 4, "lr": 3e-3, "max_len": 128}
ARMS = {"none": [], "kl": [{"kl": {"lambda": 0.0}}], "ldifs": [{"ldifs": {"lambda": 0.0, "num_layers": 2}}]}
tmp = Path(tempfile.mkdtemp())
out = {}
for arm, d in ARMS.items():
    r = run_sft(make_run_config(tmp, name=arm, defenses=d, train=TRAIN)).run_dir
    out[arm] = (
        [h["loss"] for h in json.loads((r / "metrics.json").read_text())["history"] if "loss" in h],
        load_file(str(r / "adapter" / "adapter_model.safetensors")),
    )
print("none losses:", [round(x, 6) for x in out["none"][0]])
for arm in ("kl", "ldifs"):
    dl = max(abs(a - b) for a, b in zip(out[arm][0], out["none"][0]))
    da = max((out[arm][1][k] - v).abs().max().item() for k, v in out["none"][1].items())
    scale = max(v.abs().max().item() for v in out["none"][1].values())
    print(f"{arm} λ=0 vs none: max |Δloss| = {dl:.2e}, max |Δadapter| = {da:.2e} (adapter max |w| = {scale:.2e})")
