"""``storage: s3://…``: Ray Tune's state, Ray Train's checkpoints and the finished sweep's files in a
bucket, against moto's S3-compatible server on loopback (real HTTP, real pyarrow S3 filesystem)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emray.configio import ConfigError
from emray.sweep.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "emray-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback with one bucket; AWS_* env points pyarrow and boto3 at it."""
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        for _ in range(100):
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                time.sleep(0.2)
        else:
            pytest.fail("moto server did not start")
        yield client, env
    finally:
        server.terminate()
        server.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _keys(client, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _spec(**over):
    data = {"name": "s", "base": {"model": {"name": "tiny"}, "data": {"fine": "x.jsonl"}}, **over}
    return SweepSpec.model_validate(data)


def test_storage_uris_are_checked_at_validation(tmp_path):
    from emray.configio import validate

    spec = _spec(storage="s3://bucket/sweeps", work_dir=str(tmp_path))
    assert spec.storage_uri() == "s3://bucket/sweeps/s"
    assert spec.sweep_dir() == f"{tmp_path}/s"  # trials work locally (or on the shared volume)
    assert _spec(storage="gs://bucket").storage_uri() == "gs://bucket/s"
    assert (
        _spec(storage=str(tmp_path)).storage_uri() is None
        and _spec(storage=str(tmp_path)).sweep_dir() == f"{tmp_path}/s"
    )
    for bad, message in (("hdfs://nn/x", "scheme hdfs:// is not supported"), ("s3:///x", "no bucket name after s3://")):
        with pytest.raises(ConfigError) as err:
            validate(SweepSpec, {"name": "s", "storage": bad, "base": {"data": {"fine": "x.jsonl"}}}, "spec.yaml", {})
        assert message in str(err.value) and "storage" in str(err.value)


# slow (1 min): the default run keeps the bucket end to end in test_sweep_persists_to_s3
@pytest.mark.slow
def test_ray_train_checkpoints_go_to_the_bucket(s3, tmp_path):
    import ray
    from conftest import make_run_config

    from emray.train.worker import fit_with_ray_train

    client, _ = s3
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # workers inherit the AWS_* env
    try:
        cfg = make_run_config(tmp_path, resources={"num_workers": 1, "checkpoint_every": 2, "max_failures": 1})
        result = fit_with_ray_train(cfg, tmp_path / "out", f"s3://{BUCKET}/train-test")
    finally:
        ray.shutdown()
    assert result.checkpoint.path.startswith(f"{BUCKET}/train-test/train-out/checkpoint_")
    keys = _keys(client, "train-test/train-out/")
    checkpoints = {k.split("/")[2] for k in keys if k.split("/")[2].startswith("checkpoint_20")}
    assert len(checkpoints) == 1  # the step-2 checkpoint was pruned from the bucket
    assert f"{result.checkpoint.path.split('/', 1)[1]}/adapter_model.safetensors" in keys


def test_sweep_persists_to_s3(s3, tmp_path):
    client, env = s3
    overrides = [
        f"storage=s3://{BUCKET}/sweeps",
        f"work_dir={tmp_path}",
        "train.max_steps=4",
        "eval.samples_per_paraphrase=1",
        "eval.max_new_tokens=8",
        "search.defense=[none]",
        # Ray Train's worker group inside a Tune trial, end to end in the default run (the toy default,
        # launcher auto, trains in the trial's process): its checkpoints go to the bucket too.
        "base.resources.launcher=ray_train",
    ]
    run_env = {**os.environ, **env, "EMRAY_ORGANISM": "quick", "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable,
        "-m",
        "emray.cli",
        "sweep",
        str(ROOT / "sweeps" / "toy.yaml"),
        *[a for o in overrides for a in ("--set", o)],
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=900, env=run_env)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    keys = _keys(client, "sweeps/toy/")
    assert "sweeps/toy/results.jsonl" in keys and "sweeps/toy/results.csv" in keys
    assert any(k.startswith("sweeps/toy/tune/toy/") for k in keys)  # Ray Tune's experiment state
    assert any(k.startswith("sweeps/toy/ray_train/") and k.endswith("adapter_model.safetensors") for k in keys)
    assert any(k.startswith("sweeps/toy/trials/") and k.endswith("/adapter/adapter_model.safetensors") for k in keys)
    row = json.loads(
        client.get_object(Bucket=BUCKET, Key="sweeps/toy/results.jsonl")["Body"].read().decode().splitlines()[0]
    )
    local = json.loads((tmp_path / "toy" / "results.jsonl").read_text().splitlines()[0])
    assert row == local and row["label"] == "none" and row["launcher"] == "ray_train"
    assert not Path("s3:").exists()  # no local folder named after the scheme
