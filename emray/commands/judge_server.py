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
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="backend option, value parsed as YAML (e.g. model=smollm2-135m for hf)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port (default)")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="wrap the backend in flaky: share of failed calls")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wrap the backend in flaky: added latency per call")
    parser.set_defaults(func=run)


def run(args) -> int:
    from emray.judge_server.backends import create_backend
    from emray.judge_server.server import JudgeServer

    backend = create_backend(args.backend, **_parse_options(args.option))
    if args.failure_rate or args.latency_ms:
        from emray.judge_server.backends.flaky import FlakyBackend

        backend = FlakyBackend(inner=backend, failure_rate=args.failure_rate, latency_s=args.latency_ms / 1000)
    server = JudgeServer(backend, args.host, args.port)
    print(f"emray judge-server: {args.backend} backend at {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        backend.close()
    return 0
