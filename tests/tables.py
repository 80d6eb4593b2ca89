"""Reading a table the CLI printed (fleettrace_worker.cli.render), to check it against
the JSON of the same call: cells are at least two spaces apart, the line under the
header is a rule, and the lines after the rows (fewer cells) are the footer."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from fleettrace_worker.cli import main, render
from fleettrace_worker.cli.render import Column

_GAP = re.compile(r" {2,}")
RULE = "─"


def cells(line: str) -> list[str]:
    return _GAP.split(line.strip())


def read_table(out: str) -> tuple[list[str], list[list[str]], list[str]]:
    """The header cells, the rows' cells and the lines after the table (its footer)."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith(RULE))
    header = cells(lines[rule - 1])
    body = lines[rule + 1 :]
    end = next((i for i, line in enumerate(body) if len(cells(line)) != len(header)), len(body))
    return header, [cells(line) for line in body[:end]], body[end:]


def expected_cells(
    columns: Sequence[Column], items: Sequence[Mapping[str, Any]], *, utc: bool = False
) -> list[list[str]]:
    """What the table of ``items`` shows, cell by cell."""
    return [[render.cell(item, column, utc=utc) for column in columns] for item in items]


def titles(columns: Sequence[Column], *, utc: bool = False) -> list[str]:
    return [column.title(utc=utc) for column in columns]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The output of one CLI call that must succeed quietly (exit 0, nothing on stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    return out


def listing(
    capsys: pytest.CaptureFixture[str], *argv: str, namespace: str | None = None
) -> dict[str, Any]:
    """The ``--json`` object of a list command: the one list shape, and what the list
    covers (its namespace; a dead letter's group). With ``namespace``, exactly the three
    keys, the namespace that one."""
    data: dict[str, Any] = json.loads(run(capsys, *argv, "--json"))
    assert list(data)[:2] == ["items", "next_cursor"] and "namespace" in data
    if namespace is not None:
        assert list(data) == ["items", "next_cursor", "namespace"]
        assert data["namespace"] == namespace
    return data


def narrow_and_wide(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[str, str]:
    """The same call's output on a terminal 80 columns wide, then 200: the snapshots."""
    monkeypatch.setenv("COLUMNS", "80")
    narrow = run(capsys, *argv)
    monkeypatch.setenv("COLUMNS", "200")
    return narrow, run(capsys, *argv)
