"""The OpenAI-compatible HTTP server (aiohttp): ``POST /v1/chat/completions``, ``GET /v1/models``.

A request with ``response_format: {type: json_schema}`` (the RL reward's grader) is answered with the
backend's ``grade`` text instead. Otherwise it answers a chat completion with one token: the backend's top token, and
``choices[0].logprobs.content[0].top_logprobs`` with the backend's top-k when ``logprobs`` is asked
for. ``GET /stats`` returns call counts (what tests and benchmarks count server-side).

Every malformed request is a 400 naming what is wrong. With a ``token``, every route asks for
``Authorization: Bearer <token>`` (401 otherwise); a server on a non-loopback host refuses to start
without one.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
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
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": status}}, status=status, headers=headers
    )


TOKEN_ENV = "EMRAY_JUDGE_TOKEN"  # the bearer token, for the server (when no --token-file) and the client


class BadRequest(ValueError):
    """A request the server cannot answer as sent (HTTP 400); the message says why."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _content_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise BadRequest(
                    f'{where}.content[{j}] must be a text part {{"type": "text", "text": ...}}, got {part!r:.80}'
                )
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(f"{where}.content must be a string or a list of text parts, got {type(content).__name__}")


def parse_request(body: Any) -> dict:
    """Check a chat completion request; returns ``model``, ``messages`` (content as text),
    ``schema`` (None unless a json_schema request), ``json_schema`` (bool), ``logprobs``, ``top_k``.
    Raises BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__}")
    if "messages" not in body:
        raise BadRequest("messages: missing")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    clean = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"{where} must be an object with role and content, got {type(m).__name__} {m!r:.80}")
        if not isinstance(m.get("role"), str):
            raise BadRequest(f"{where}.role must be a string, got {m.get('role')!r:.80}")
        clean.append({**m, "content": _content_text(m.get("content"), where)})
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"model must be a string, got {type(model).__name__}")
    logprobs = body.get("logprobs", False)
    if logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequest(f"logprobs must be true or false, got {logprobs!r:.80}")
    top = body.get("top_logprobs")
    if top is None:
        top = 1
    if isinstance(top, bool) or not isinstance(top, int):
        raise BadRequest(f"top_logprobs must be an integer between 0 and 20, got {top!r:.80}")
    if not 0 <= top <= 20:
        raise BadRequest("top_logprobs must be between 0 and 20")
    fmt = body.get("response_format")
    schema, structured = None, False
    if fmt is not None:
        if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
            raise BadRequest(f"response_format must be an object with a string type, got {fmt!r:.80}")
        if fmt["type"] not in ("text", "json_object", "json_schema"):
            raise BadRequest(f"response_format.type must be text, json_object or json_schema, got {fmt['type']!r:.80}")
        if fmt["type"] == "json_schema":
            structured = True
            spec = fmt.get("json_schema")
            if spec is None:
                spec = {}
            if not isinstance(spec, dict):
                raise BadRequest(f"response_format.json_schema must be an object, got {type(spec).__name__}")
            schema = spec.get("schema")
            if schema is not None and not isinstance(schema, dict):
                raise BadRequest(f"response_format.json_schema.schema must be an object, got {type(schema).__name__}")
            props = (schema or {}).get("properties")
            if props is not None and not isinstance(props, dict):
                raise BadRequest(
                    f"response_format.json_schema.schema.properties must be an object, got {type(props).__name__}"
                )
    return {
        "model": model,
        "messages": clean,
        "schema": schema,
        "json_schema": structured,
        "logprobs": bool(logprobs),
        "top_k": top or 1,
    }


class JudgeServer:
    """Serves ``backend`` on ``host:port`` (port 0: a free one). ``start()`` runs it on a thread.

    ``token``: the bearer token every request must carry (None: no authentication, loopback only)."""

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        if not token and not is_loopback(host):
            raise ValueError(
                f"judge server on {host!r}: a host other than loopback needs a bearer token "
                f"(--token-file FILE or {TOKEN_ENV})"
            )
        self.backend = backend
        self.token = token or None
        self.counts: Counter[str] = Counter()  # requests, ok, fault:<kind>, bad_request, unauthorized
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
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
            try:
                body = json.loads(await request.text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise BadRequest(f"the body is not JSON: {err}") from None
            req = parse_request(body)
        except BadRequest as err:
            self.counts["bad_request"] += 1
            return _error(400, f"bad request: {err}", "invalid_request_error")
        model = req["model"] or self.backend.model_name
        messages, top_k = req["messages"], req["top_k"]
        if req["json_schema"]:
            return await self._grade(model, messages, req["schema"])
        pairs, failed = await self._backend_call(self.backend.top_logprobs(model, messages, max(top_k, 1)))
        if failed is not None:
            return failed
        prompt_tokens = sum(len(str(m.get("content", ""))) // 4 + 1 for m in messages)  # ~4 chars a token
        return web.json_response(completion_body(model, pairs, req["logprobs"], top_k, prompt_tokens))

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
            return None, _error(
                400,
                f"the {type(self.backend).__name__} backend does not answer json_schema requests",
                "invalid_request_error",
            )
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
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": self.backend.model_name, "object": "model", "created": 0, "owned_by": "emray"}
        return web.json_response({"object": "list", "data": [model]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.counts))

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if self.token is not None:
            sent = request.headers.get("Authorization", "")
            scheme, _, given = sent.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                self.counts["unauthorized"] += 1
                why = "missing bearer token" if not sent else "wrong bearer token"
                response = _error(
                    401,
                    f"{why}: send the server's token as 'Authorization: Bearer <token>' "
                    f"(the judge client sends ${TOKEN_ENV})",
                    "authentication_error",
                )
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._auth])
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

    def start(self) -> JudgeServer:
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

    def __enter__(self) -> JudgeServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_judge_server(
    backend: str | Backend = "rules",
    options: dict | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
) -> JudgeServer:
    """A judge server on a background thread of this process; ``.url`` to call it, ``.stop()`` to end it."""
    if isinstance(backend, str):
        backend = create_backend(backend, **(options or {}))
    return JudgeServer(backend, host, port, token).start()


class JudgeServerProcess:
    """``python -m emray.cli judge-server`` as a subprocess (its own GIL: what a benchmark wants)."""

    def __init__(
        self,
        backend: str = "rules",
        options: dict | None = None,
        extra_args: list[str] | None = None,
        startup_timeout_s: float = 120.0,
        env: dict | None = None,
    ):
        args = [sys.executable, "-m", "emray.cli", "judge-server", "--backend", backend, "--port", "0"]
        for key, value in (options or {}).items():
            args += ["--option", f"{key}={json.dumps(value)}"]
        self.proc = subprocess.Popen(args + (extra_args or []), stdout=subprocess.PIPE, text=True, env=env)
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

    def __enter__(self) -> JudgeServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_judge_server_process(
    backend: str = "rules", options: dict | None = None, **kwargs: Any
) -> JudgeServerProcess:
    return JudgeServerProcess(backend, options, **kwargs)
