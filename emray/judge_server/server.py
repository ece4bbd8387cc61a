"""The OpenAI-compatible HTTP server (aiohttp): ``POST /v1/chat/completions``, ``GET /v1/models``.

A request with ``response_format: {type: json_schema}`` (the RL reward's grader) is answered with the
backend's ``grade`` text instead. Otherwise it answers a chat completion with one token: the backend's top token, and
``choices[0].logprobs.content[0].top_logprobs`` with the backend's top-k when ``logprobs`` is asked
for. ``GET /stats`` returns call counts (what tests and benchmarks count server-side).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

from aiohttp import web

from emray.judge_server.backends import Backend, Fault, create_backend


def _token_entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def completion_body(model: str, pairs: list[tuple[str, float]], logprobs: bool, top_k: int, prompt_tokens: int) -> dict:
    token, logprob = pairs[0]
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": token, "refusal": None},
        "finish_reason": "length",
        "logprobs": None,
    }
    if logprobs:
        entry = _token_entry(token, logprob)
        entry["top_logprobs"] = [_token_entry(t, lp) for t, lp in pairs[:top_k]]
        choice["logprobs"] = {"content": [entry], "refusal": None}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
    }


def _error(status: int, message: str, kind: str) -> web.Response:
    headers = {"retry-after": "0"} if status == 429 else None
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status, headers=headers)


class JudgeServer:
    """Serves ``backend`` on ``host:port`` (port 0: a free one). ``start()`` runs it on a thread."""

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0):
        self.backend = backend
        self.counts: Counter[str] = Counter()  # requests, ok, fault:<kind>, bad_request
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(1024)
        self.host, self.port = self._sock.getsockname()[:2]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- handlers ----------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.Response:
        self.counts["requests"] += 1
        try:
            body = await request.json()
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            self.counts["bad_request"] += 1
            return _error(400, f"bad request: {err}", "invalid_request_error")
        model = str(body.get("model") or self.backend.model_name)
        if isinstance(body.get("response_format"), dict) and body["response_format"].get("type") == "json_schema":
            schema = (body["response_format"].get("json_schema") or {}).get("schema")
            return await self._grade(model, messages, schema)
        top_k = int(body.get("top_logprobs") or 1)
        if not 0 <= top_k <= 20:
            self.counts["bad_request"] += 1
            return _error(400, "top_logprobs must be between 0 and 20", "invalid_request_error")
        pairs, failed = await self._backend_call(self.backend.top_logprobs(model, messages, max(top_k, 1)))
        if failed is not None:
            return failed
        prompt_tokens = sum(len(str(m.get("content", ""))) // 4 + 1 for m in messages)  # ~4 chars a token
        return web.json_response(completion_body(model, pairs, bool(body.get("logprobs")), top_k, prompt_tokens))

    async def _backend_call(self, call):
        """(the backend's answer, None), or (None, the error response): an injected fault as the fault
        says, a backend that cannot answer this kind of request a 400, a backend bug a 500 (not a dead server)."""
        try:
            result = await call
        except Fault as fault:
            self.counts[f"fault:{fault.kind}"] += 1
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if fault.body is not None:
                return None, web.Response(status=fault.status, body=fault.body, content_type="application/json")
            return None, _error(fault.status, f"injected failure ({fault.kind})", "server_error")
        except NotImplementedError:
            self.counts["bad_request"] += 1
            return None, _error(400, f"the {type(self.backend).__name__} backend does not answer json_schema requests", "invalid_request_error")
        except Exception as err:  # noqa: BLE001
            self.counts["backend_error"] += 1
            return None, _error(500, f"backend error: {type(err).__name__}: {err}", "server_error")
        self.counts["ok"] += 1
        return result, None

    async def _grade(self, model: str, messages: list[dict], schema: dict | None) -> web.Response:
        """A structured-output request (``response_format: json_schema``): the backend's text reply."""
        text, failed = await self._backend_call(self.backend.grade(model, messages, schema))
        if failed is not None:
            return failed
        prompt_tokens = sum(len(str(m.get("content", ""))) // 4 + 1 for m in messages)
        completion_tokens = len(text) // 4 + 1
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None}, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        })

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": self.backend.model_name, "object": "model", "created": 0, "owned_by": "emray"}
        return web.json_response({"object": "list", "data": [model]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.counts))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats)
        return app

    # -- lifecycle ---------------------------------------------------------------------------
    async def _start(self) -> None:
        # handler_cancellation: a call the client gave up on (timeout) stops holding the server.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock, shutdown_timeout=0.5).start()

    def start(self) -> "JudgeServer":
        """Serve on a daemon thread; returns once the server accepts connections."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"judge-server:{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("judge server did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
        self.backend.close()

    def serve_forever(self) -> None:
        """Serve in the foreground (the CLI) until interrupted."""

        async def main() -> None:
            await self._start()
            try:
                await asyncio.Event().wait()
            finally:
                await self._runner.cleanup()

        asyncio.run(main())

    def __enter__(self) -> "JudgeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_judge_server(backend: str | Backend = "rules", options: dict | None = None, host: str = "127.0.0.1",
                       port: int = 0) -> JudgeServer:
    """A judge server on a background thread of this process; ``.url`` to call it, ``.stop()`` to end it."""
    if isinstance(backend, str):
        backend = create_backend(backend, **(options or {}))
    return JudgeServer(backend, host, port).start()


class JudgeServerProcess:
    """``python -m emray.cli judge-server`` as a subprocess (its own GIL: what a benchmark wants)."""

    def __init__(self, backend: str = "rules", options: dict | None = None, extra_args: list[str] | None = None,
                 startup_timeout_s: float = 120.0):
        args = [sys.executable, "-m", "emray.cli", "judge-server", "--backend", backend, "--port", "0"]
        for key, value in (options or {}).items():
            args += ["--option", f"{key}={json.dumps(value)}"]
        self.proc = subprocess.Popen(args + (extra_args or []), stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + startup_timeout_s
        self.url = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if "http://" in line:
                self.url = line.split()[-1].strip()
                break
        if self.url is None:
            self.stop()
            raise RuntimeError(f"judge-server subprocess did not report its URL (exit code {self.proc.poll()})")

    def counts(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> "JudgeServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_judge_server_process(backend: str = "rules", options: dict | None = None, **kwargs: Any) -> JudgeServerProcess:
    return JudgeServerProcess(backend, options, **kwargs)
