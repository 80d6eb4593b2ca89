"""What every storage command (``migrate``, ``prune``, ``traces``) shares, run for real
against the machine's PostgreSQL: one-line database errors without the password, a
database without the schema, and --help."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from fleettrace_worker.cli import main
from tests.servers import free_port
from tests.worker_helpers import _one_clean_line, run


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        (
            f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/postgres",
            1,
            "is unavailable: connection to server",
        ),
        ("postgresql://nobody:hunter2@127.0.0.1:5432/postgres", 2, 'role "nobody" does not'),
        ("mysql://root:hunter2@127.0.0.1/x", 2, "must start with postgresql://"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["migrate"],
        ["prune", "--older-than", "30d"],
        ["traces", "list"],
        ["traces", "show", str(uuid.UUID(int=1))],
        ["traces", "cost"],
    ],
)
def test_database_errors_are_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str], command: list[str], url: str, code: int, message: str
) -> None:
    got, out, err = run(capsys, *command, "--database-url", url)
    assert got == code and out == ""
    line = _one_clean_line(err)
    assert line.startswith(f"fleettrace {command[0]}: ")
    assert message in line
    assert "hunter2" not in line


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (
        ["migrate"],
        ["prune"],
        ["traces"],
        ["traces", "list"],
        ["traces", "show"],
        ["traces", "cost"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: fleettrace {' '.join(command)}")
        assert "--database-url" in out or command == ["traces"]


@pytest.mark.parametrize(
    "command",
    [
        ["prune", "--older-than", "30d"],
        ["traces", "list"],
        ["traces", "show", str(uuid.UUID(int=1))],
        ["traces", "cost"],
    ],
)
def test_commands_on_a_database_without_the_schema_say_there_is_no_data_and_where(
    capsys: pytest.CaptureFixture[str], database_url: str, command: list[str]
) -> None:
    # Not "run fleettrace migrate": a reader pointed at the wrong database should not be
    # told to put tables into it.
    parts = urlsplit(database_url)
    user, host = parts.username or "postgres", parts.netloc.rpartition("@")[2]
    with_password = urlunsplit(parts._replace(netloc=f"{user}:hunter2@{host}"))
    code, out, err = run(capsys, *command, "--database-url", with_password)
    assert code == 1 and out == ""
    line = _one_clean_line(err)
    shown = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    assert line.startswith(f"fleettrace {command[0]}: no fleettrace data here: {shown} ")
    assert "hunter2" not in line and "migrate" not in line
