"""The ``fleettrace`` command: one entry point, one module per subcommand.

Each subcommand module has ``register(subparsers)``, which adds its parser and sets
``handler`` to a function taking the parsed arguments and returning the exit code.
Errors fleettrace raises on purpose end here as one line on stderr and a non-zero
exit; a traceback reaches the user only for a bug.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Final

from fleettrace.errors import ConfigurationError, FleettraceError

#: Subcommand modules under fleettrace_worker.cli, in the order --help lists them.
COMMANDS: Final[tuple[str, ...]] = (
    "metrics",
    "demo",
    "migrate",
    "prune",
    "traces",
    "worker",
    "dlq",
    "groups",
)

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleettrace",
        description="Telemetry for fleets of LLM agents: Redis Streams in, PostgreSQL and "
        "LangSmith out.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fleettrace_worker.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigurationError as error:
        print(f"fleettrace {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except FleettraceError as error:
        print(f"fleettrace {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
