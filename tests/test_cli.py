"""How the ``fleettrace`` command fails: an unreachable Redis, a refused PostgreSQL login
or a bad URL is one line on stderr and a non-zero exit, never a traceback; and
``--help`` works on every command and subcommand."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fleettrace_worker.cli import build_parser, main
from tests.servers import free_port

pytestmark = pytest.mark.timeout(300)

URL_VARIABLES = ("FLEETTRACE_REDIS_URL", "REDIS_URL", "FLEETTRACE_DATABASE_URL", "DATABASE_URL")
#: Nothing listens here: a connection is refused at once.
REDIS_PORT = free_port()
UNREACHABLE_REDIS = f"redis://127.0.0.1:{REDIS_PORT}/0"
UNREACHABLE_POSTGRES = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
REFUSED_LOGIN = "postgresql://no_such_role_ft:secret-pw@127.0.0.1:5432/postgres"
MISSING_DATABASE = "postgresql://postgres@127.0.0.1:5432/no_such_database_ft"
BAD_REDIS_URL = "http://127.0.0.1:6379/0"
BAD_DATABASE_URL = "mysql://root:secret-pw@127.0.0.1/db"


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every command path of the parser: ("demo",), ("traces", "list")..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


COMMAND_PATHS = sorted(_commands(build_parser()))


def _fleettrace(*args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in URL_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "fleettrace_worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_walk_finds_every_registered_command() -> None:
    assert ("demo",) in COMMAND_PATHS
    assert ("metrics",) in COMMAND_PATHS


@pytest.mark.parametrize("path", [(), *COMMAND_PATHS], ids=lambda p: " ".join(p) or "fleettrace")
def test_help_on_every_command_exits_0(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: {' '.join(('fleettrace', *path))}")
    assert err == ""


def test_help_is_also_what_the_installed_command_prints() -> None:
    result = _fleettrace("demo", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: fleettrace demo")
    assert "--data-dir DIR" in result.stdout


def _registered(args: tuple[str, ...]) -> None:
    path = tuple(arg for arg in args[:2] if not arg.startswith("-"))
    if path[:1] not in [p[:1] for p in COMMAND_PATHS]:
        pytest.skip(f"'fleettrace {path[0]}' is not registered in this build")


#: (arguments, text the one line must contain). Each names the server or URL at fault.
FAILURES = [
    # Redis that does not answer.
    (("metrics", "--redis-url", UNREACHABLE_REDIS), f"127.0.0.1:{REDIS_PORT}"),
    (
        ("demo", "--redis-url", UNREACHABLE_REDIS, "--database-url", MISSING_DATABASE),
        f"Redis at {UNREACHABLE_REDIS}",
    ),
    (("dlq", "list", "--redis-url", UNREACHABLE_REDIS), f"127.0.0.1:{REDIS_PORT}"),
    # A URL that is not a Redis URL.
    (("metrics", "--redis-url", BAD_REDIS_URL), "must start with redis://"),
    (("demo", "--redis-url", BAD_REDIS_URL, "--database-url", MISSING_DATABASE), "redis://"),
    (("dlq", "list", "--redis-url", BAD_REDIS_URL), "redis://"),
    # PostgreSQL refusing the login, missing the database, or not listening.
    (("migrate", "--database-url", REFUSED_LOGIN), "no_such_role_ft"),
    (("migrate", "--database-url", MISSING_DATABASE), "no_such_database_ft"),
    (("migrate", "--database-url", UNREACHABLE_POSTGRES), "127.0.0.1"),
    (("traces", "list", "--database-url", REFUSED_LOGIN), "no_such_role_ft"),
    (("traces", "cost", "--database-url", REFUSED_LOGIN), "no_such_role_ft"),
    (("prune", "--older-than", "30d", "--database-url", REFUSED_LOGIN), "no_such_role_ft"),
    (
        ("demo", "--redis-url", "redis://127.0.0.1:6379/0", "--database-url", REFUSED_LOGIN),
        "no_such_role_ft",
    ),
    (("worker", "--burst", "--database-url", REFUSED_LOGIN), "no_such_role_ft"),
    # A URL that is not a PostgreSQL URL.
    (("migrate", "--database-url", BAD_DATABASE_URL), "postgresql://"),
    (("traces", "list", "--database-url", BAD_DATABASE_URL), "postgresql://"),
    (
        ("demo", "--redis-url", "redis://127.0.0.1:6379/0", "--database-url", BAD_DATABASE_URL),
        "postgresql://",
    ),
    (("worker", "--burst", "--database-url", BAD_DATABASE_URL), "postgresql://"),
]


@pytest.mark.parametrize(
    ("args", "expected"),
    FAILURES,
    ids=lambda value: " ".join(value)[:60] if isinstance(value, tuple) else None,
)
def test_a_server_or_url_at_fault_is_one_line_and_a_failing_exit(
    args: tuple[str, ...], expected: str
) -> None:
    _registered(args)
    result = _fleettrace(*args)
    assert result.returncode not in (0, None), result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fleettrace {args[0]}"), lines[0]
    assert expected in lines[0]
    assert "secret-pw" not in result.stderr + result.stdout
