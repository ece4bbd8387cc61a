"""The ``emray`` command. Thin: each subcommand lives in emray/commands/<name>.py.

A command module defines ``register(subparsers)``, which adds its parser with a one-line ``help``
and sets ``func`` (namespace -> exit code). Modules are discovered, so adding a command touches
no other file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import emray.commands
from emray import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emray",
        description="Sweeps of in-training defenses against emergent misalignment, on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"emray {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(emray.commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"emray.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # No command is a usage error (exit 2, like argparse's own): usage to stderr, nothing to stdout.
        parser.print_help(sys.stderr)
        return 2
    from emray.configio import ConfigError
    from emray.data.chat import DataError
    from emray.data.questions import QuestionError
    from emray.data.tokenize import TemplateError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, QuestionError, TemplateError, FileNotFoundError) as err:
        if os.environ.get("EMRAY_DEBUG"):
            raise
        print(f"emray {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        # Bad values in otherwise valid input (a pool too small, an unknown method). EMRAY_DEBUG=1 keeps
        # the traceback for the rare ValueError that is a bug.
        if os.environ.get("EMRAY_DEBUG"):
            raise
        print(f"emray {args.command}: error: {err} (EMRAY_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emray {args.command}: interrupted; finished work is kept and reused on the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
