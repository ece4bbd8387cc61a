"""cluster.yaml: Ray's schema, a shared-storage mount that fails loudly, no venv/caches in the rsync,
token authentication on every node."""

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_cluster()))  # what `ray up` does before anything else


def test_mount_fails_loudly_until_the_efs_id_is_set():
    commands = _cluster()["initialization_commands"]
    assert not any("|| true" in c for c in commands)
    mount = next(c for c in commands if "/mnt/shared" in c)
    # Run the real command: with the placeholder id it must stop before mounting anything.
    out = subprocess.run(["bash", "-c", mount], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "set EFS_ID to your EFS file system id" in out.stderr


def test_rsync_skips_venv_and_caches():
    cluster = _cluster()
    assert ".gitignore" in cluster["rsync_filter"]
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {".venv/", ".emray_cache/", ".cache/", "sweeps_out/"} <= set(ignored)
    assert "**/.venv" in cluster["rsync_exclude"]


def test_every_node_starts_with_the_shared_token():
    cluster = _cluster()
    assert cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cluster[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start)
    assert not any("--dashboard-host=0.0.0.0" in c for c in cluster["head_start_ray_commands"])
    assert any("[cluster]" in c for c in cluster["setup_commands"])
