"""``emray judge-server``: an OpenAI-compatible judge on 127.0.0.1 (rules, hf, fixed; flaky to test)."""

from __future__ import annotations


def _parse_options(items: list[str]) -> dict:
    import yaml

    from emray.configio import ConfigError

    options = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--option {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        options[key.strip()] = yaml.safe_load(raw) if raw else ""
    return options


def register(subparsers) -> None:
    parser = subparsers.add_parser("judge-server", help="serve an OpenAI-compatible judge (rules or a local HF model)")
    parser.add_argument("--backend", default="rules", help="rules | hf | fixed | flaky (default: rules)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option, value parsed as YAML (e.g. model=smollm2-135m for hf)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; any other host needs a token)",
    )
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port (default)")
    parser.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="require 'Authorization: Bearer <token>', the token being FILE's first line "
        "(default: $EMRAY_JUDGE_TOKEN if set; clients send $EMRAY_JUDGE_TOKEN)",
    )
    parser.add_argument(
        "--failure-rate", type=float, default=0.0, help="wrap the backend in flaky: share of failed calls"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="wrap the backend in flaky: added latency per call"
    )
    parser.set_defaults(func=run)


def read_token(token_file: str | None) -> str | None:
    """The bearer token: ``--token-file``'s first line, else ``$EMRAY_JUDGE_TOKEN``, else None."""
    import os
    from pathlib import Path

    from emray.configio import ConfigError
    from emray.judge_server.server import TOKEN_ENV

    if token_file is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    path = Path(token_file)
    if path.is_dir():
        raise ConfigError(f"--token-file {path}: is a directory, expected a file holding the token")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--token-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--token-file {path}: cannot read the token: {err}") from None
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"--token-file {path}: the file is empty; put the token on its first line")
    return token


def run(args) -> int:
    import errno

    from emray.configio import ConfigError
    from emray.judge_server.backends import create_backend
    from emray.judge_server.server import TOKEN_ENV, JudgeServer, is_loopback

    token = read_token(args.token_file)
    if token is None and not is_loopback(args.host):
        raise ConfigError(
            f"--host {args.host}: listening beyond this machine needs a bearer token; "
            f"pass --token-file FILE or set {TOKEN_ENV} (or use --host 127.0.0.1)"
        )
    backend = create_backend(args.backend, **_parse_options(args.option))
    if args.failure_rate or args.latency_ms:
        from emray.judge_server.backends.flaky import FlakyBackend

        backend = FlakyBackend(inner=backend, failure_rate=args.failure_rate, latency_s=args.latency_ms / 1000)
    try:
        server = JudgeServer(backend, args.host, args.port, token=token)
    except OSError as err:
        backend.close()
        why = (
            "the port is already in use (another judge server?); pick another --port or 0 for a free one"
            if err.errno == errno.EADDRINUSE
            else (err.strerror or str(err))
        )
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {why}") from None
    auth = "bearer token required" if token else "no token"
    print(f"emray judge-server: {args.backend} backend ({auth}) at {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        backend.close()
    return 0
