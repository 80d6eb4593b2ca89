"""The ``fleettrace demo`` command's progress display, its refusals of bad arguments and
namespaces, and its run ids."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from fleettrace.keys import Keys
from fleettrace_worker.cli import demo as demo_cli
from fleettrace_worker.cli import main
from fleettrace_worker.demo.accounting import Progress
from fleettrace_worker.demo.settings import DemoSettings, new_run_id

pytestmark = pytest.mark.timeout(300)


def test_the_progress_shows_as_a_live_table_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with demo_cli._display(console) as show:
        show(Progress(2, 120, 30, 80, 6, 1, 0.25, 3, 4))
    text = out.getvalue()
    assert "records sent" in text
    assert "120" in text
    assert "116 (30 traces, 80 metric samples, 6 tool calls and plan records)" in text
    assert "in flight" in text
    assert "$0.2500" in text


def test_the_progress_is_a_plain_line_elsewhere() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with demo_cli._display(console) as show:
        show(Progress(1, 10, 4, 5, 0, 0, 0.5, 0, 0))
        show(Progress(1, 11, 4, 5, 0, 0, 0.5, 0, 0))  # within the interval: not printed
    assert out.getvalue().splitlines() == [
        "agents running 1, sent 10, stored 9, dead letters 0, in flight 1, cost $0.5000"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agents", "0"], "must be between 1 and 64, got 0"),
        (["--agents", "x"], "not a whole number: 'x'"),
        (["--plans", "0"], "must be at least 1, got 0"),
        (["--seconds", "0"], "must be more than 0 and at most 3600 seconds, got 0"),
        (["--seconds", "3601"], "must be more than 0 and at most 3600 seconds, got 3601"),
        (["--seconds", "soon"], "not a number of seconds: 'soon'"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_namespace_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str, database_url: str
) -> None:
    code = main(
        ["demo", "--redis-url", redis_url, "--database-url", database_url, "--namespace", "a b"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("fleettrace demo: namespace 'a b' must be")
    assert err.count("\n") == 1


def test_run_ids_are_unique_namespaces() -> None:
    ids = {new_run_id() for _ in range(100)}
    assert len(ids) == 100
    for run_id in ids:
        Keys(run_id)
    assert DemoSettings("r", "d", "n").run_id != DemoSettings("r", "d", "n").run_id
