"""Reading a table the CLI printed (fleettrace_worker.cli.render), to check it against
the JSON of the same call: cells are at least two spaces apart, the line under the
header is a rule, and the lines after the rows (fewer cells) are the footer."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fleettrace_worker.cli import render
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
