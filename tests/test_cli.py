"""How the ``fleettrace`` command fails: an unreachable Redis, a refused PostgreSQL login
or a bad URL is one line on stderr and a non-zero exit, never a traceback; and
``--help`` works on every command and subcommand."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import fleettrace
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_USAGE, build_parser, main, options
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


def _parser_of(
    path: tuple[str, ...], parser: argparse.ArgumentParser | None = None
) -> argparse.ArgumentParser:
    """The parser of one command path."""
    sub = parser or build_parser()
    for name in path:
        [subparsers] = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        sub = subparsers.choices[name]
    return sub


def _fleettrace(*args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in URL_VARIABLES}
    # A namespace of its own: what other runs left in the default one (a group behind,
    # say, which the worker warns about) must not add lines to the one checked here.
    env["FLEETTRACE_NAMESPACE"] = f"cli-{uuid.uuid4().hex[:12]}"
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
    pytest.param(
        ("worker", "--burst", "--database-url", REFUSED_LOGIN),
        "no_such_role_ft",
        marks=pytest.mark.slow,  # the worker retries the login before it gives up
    ),
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
    # A server that does not answer may come back (1); a wrong URL, login or database
    # is the caller's to fix (2, as for a usage error).
    unreachable = UNREACHABLE_REDIS in args or UNREACHABLE_POSTGRES in args
    assert result.returncode == (EXIT_FAILURE if unreachable else EXIT_USAGE), result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fleettrace {args[0]}"), lines[0]
    assert expected in lines[0]
    assert "secret-pw" not in result.stderr + result.stdout


def _options(parser: argparse.ArgumentParser) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """Every option of every command, with the command path that takes it."""
    for path in [(), *COMMAND_PATHS]:
        for action in _parser_of(path, parser)._actions:
            if action.option_strings:
                yield path, action


OPTIONS = list(_options(build_parser()))


def test_the_walk_finds_every_number_option() -> None:
    flags = {action.option_strings[0] for _, action in OPTIONS if action.type is not None}
    assert {"--limit", "--batch", "--agents", "--watch", "--batch-rows"} <= flags


@pytest.mark.parametrize(
    ("path", "action"),
    [(p, a) for p, a in OPTIONS if a.type is not None],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v.option_strings[0],
)
def test_every_number_option_uses_the_shared_types(
    path: tuple[str, ...], action: argparse.Action
) -> None:
    """Plain int/float would let 0, -1 or nan through to code that names the field."""
    assert action.type is Path or isinstance(action.type, options.WholeNumber | options.Seconds), (
        f"fleettrace {' '.join(path)} {action.option_strings[0]}: type {action.type!r}"
    )


@pytest.mark.parametrize(
    ("path", "flag"),
    [
        (p, a.option_strings[0])
        for p, a in OPTIONS
        if isinstance(a.type, options.WholeNumber) and a.type.low >= 1
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v,
)
def test_a_count_of_0_is_refused_naming_the_flag(
    path: tuple[str, ...], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path, flag, "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: fleettrace {' '.join(path)} ")
    assert f"error: argument {flag}: must be " in err
    assert ", got 0" in err


def test_limit_0_is_refused_by_every_command_that_has_one() -> None:
    with_limit = {p for p, a in OPTIONS if "--limit" in a.option_strings}
    assert with_limit >= {("traces", "list"), ("dlq", "list")}
    refused = {
        p
        for p, a in OPTIONS
        if "--limit" in a.option_strings and isinstance(a.type, options.WholeNumber)
        if a.type.low == 1
    }
    assert refused == with_limit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("worker", "--batch", "0"), "argument --batch: must be at least 1, got 0"),
        (("worker", "--block-ms", "-1"), "argument --block-ms: must be at least 0, got -1"),
        (("worker", "--claim-idle-ms", "x"), "argument --claim-idle-ms: not a whole number: 'x'"),
        (("worker", "--max-deliveries", "0"), "argument --max-deliveries: must be at least 1"),
        (("dlq", "list", "--limit", "-3"), "argument --limit: must be at least 1, got -3"),
        (("traces", "list", "--limit", "10001"), "must be between 1 and 10000, got 10001"),
        (("metrics", "--watch", "nan"), "argument --watch: must be a positive number of seconds"),
        (("metrics", "--watch", "inf"), "argument --watch: must be a positive number of seconds"),
        (("prune", "--older-than", "1d", "--batch-rows", "0"), "argument --batch-rows"),
    ],
)
def test_a_bad_number_names_the_flag_not_the_setting(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "batch_records" not in err
    assert err.splitlines()[0].startswith(f"usage: fleettrace {args[0]}")


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"fleettrace {importlib.metadata.version('fleettrace')}\n"
    assert fleettrace.__version__ == importlib.metadata.version("fleettrace")


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=" ".join)
def test_an_unknown_option_prints_the_usage_of_its_subcommand(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--no-such-option"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: fleettrace {' '.join(path)} ")
    parser = _parser_of(path)
    if any(a.required for a in parser._actions) or any(
        g.required for g in parser._mutually_exclusive_groups
    ):
        # argparse names a missing required argument first; the usage is still this one.
        assert lines[-1].startswith(f"fleettrace {' '.join(path)}: error: ")
    else:
        assert lines[-1] == (
            f"fleettrace {' '.join(path)}: error: unrecognized arguments: --no-such-option"
        )


def test_an_unknown_option_before_the_action_names_the_parent_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["dlq", "--no-such-option", "list"])
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("usage: fleettrace dlq ")
    assert lines[-1] == "fleettrace dlq: error: unrecognized arguments: --no-such-option"


def test_every_command_that_prints_has_json() -> None:
    """Issue: every command that prints has --json (the demo's: its report). The one
    without is `dashboard`, which serves pages and /api/ (JSON already) until stopped
    and prints no result of its own."""
    with_json = {p for p, a in OPTIONS if "--json" in a.option_strings}
    leaves = {p for p in COMMAND_PATHS if not any(q[: len(p)] == p != q for q in COMMAND_PATHS)}
    assert leaves - with_json == {("dashboard",)}
