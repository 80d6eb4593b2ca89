"""How every ``fleettrace`` command prints: one table look for people, one JSON shape
for scripts.

A command describes its columns once (``Column``: the item's key, a header, the kind of
value, a unit) and hands over its items as the plain dicts its ``--json`` prints; the
table is drawn from the same dicts, so the table and the JSON of one call cannot
disagree. The rules live here, not in the commands:

- headers carry the unit (``LATENCY (ms)``, ``COST (USD)``, ``STARTED (local)``);
- durations show 3 significant digits, dollars cents (tiny amounts 3 significant
  digits), counts thousands separators, an unknown cost ``unpriced``, anything else
  unknown ``-``;
- rows sort naturally (``plan-2`` before ``plan-10``), or by ``--sort COLUMN``
  (``--sort=-COLUMN`` descending; unknown values last either way), in the table and in
  the JSON alike;
- a table fits the terminal: the headers of numbers wrap, free text is cut, the widest
  column first, then identifiers down to a recognisable prefix, and as a last resort
  free-text columns are left out (a caption names them); numbers and times are never
  cut. Output to a pipe or file is not cut unless ``COLUMNS`` says how wide it may be;
- times are ISO 8601 local times, UTC with ``--utc`` (the header says which);
- colour follows rich, which honours ``NO_COLOR`` (and draws none into a pipe).

Every list command prints ``{"items": [...], "next_cursor": ...}`` with ``--json``
(``next_cursor`` is null when nothing follows, ``items`` is ``[]`` when nothing
matches); ``--jsonl`` prints the items one per line as they are read. Unknown values are
``null``, never ``0``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleettrace.settings import environment
from fleettrace_worker.cli.cells import (
    CENT,
    MAX_CELL_CHARS,
    NUMERIC_KINDS,
    SIGNIFICANT_DIGITS,
    UNKNOWN,
    UNPRICED,
    Column,
    Kind,
    cell,
    find_column,
    format_time,
    format_usd,
    format_value,
    lookup,
    natural_key,
    significant,
    sort_items,
)

__all__ = [
    "CENT",
    "MAX_CELL_CHARS",
    "SIGNIFICANT_DIGITS",
    "UNKNOWN",
    "UNPRICED",
    "Column",
    "Kind",
    "add_json_option",
    "add_output_options",
    "build_table",
    "cell",
    "check_sort",
    "count_of",
    "dumps",
    "emit",
    "find_column",
    "footer",
    "format_time",
    "format_usd",
    "format_value",
    "lookup",
    "natural_key",
    "new_console",
    "ordered",
    "print_table",
    "significant",
    "sort_items",
    "table_width",
    "write_jsonl",
    "write_list",
    "write_object",
]

#: An identifier is never cut shorter than this: still enough to recognise it.
MIN_ID_CHARS: Final = 8
#: Free text is never cut shorter than this (or its header's longest word).
MIN_TEXT_CHARS: Final = 6
#: Free text is cut to this before any header wraps.
ROOMY_TEXT_CHARS: Final = 24
#: Characters between two columns: one of padding (collapsed) and the blank divider.
COLUMN_GAP: Final = 2


def add_output_options(
    parser: argparse.ArgumentParser,
    *,
    jsonl: bool = False,
    sort: bool = True,
    times: bool = True,
) -> None:
    """``--json`` (and ``--jsonl`` where lines can stream), ``--sort``, ``--utc``."""
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument(
        "--json", action="store_true", help='JSON for scripts: {"items": [...], "next_cursor": ...}'
    )
    if jsonl:
        formats.add_argument(
            "--jsonl", action="store_true", help="one JSON object per line, printed as read"
        )
    if sort:
        parser.add_argument(
            "--sort",
            metavar="COLUMN",
            help="sort by this column (its --json key; several comma-separated); "
            "--sort=-COLUMN for descending",
        )
    if times:
        parser.add_argument("--utc", action="store_true", help="times in UTC, not local time")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json`` for a command that prints one result, not a list."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def check_sort(args: argparse.Namespace, columns: Sequence[Column]) -> None:
    """A one-line usage error now, before any work, for a ``--sort`` naming no column."""
    for part in (getattr(args, "sort", None) or "").split(","):
        if part.strip():
            find_column(columns, part.strip().lstrip("-"))


def ordered(
    args: argparse.Namespace,
    items: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    default: str | None = None,
) -> list[Mapping[str, Any]]:
    """The items in the order ``--sort`` asks for, else ``default`` (a sort spec), else
    as given (a command's own order: newest first, costliest first)."""
    spec = getattr(args, "sort", None) or default
    return list(items) if spec is None else sort_items(items, columns, spec)


# ---------------------------------------------------------------------------- tables


def new_console() -> Console:
    """A console for stdout: the terminal's width on a terminal, ``COLUMNS`` when set,
    else unbounded (a pipe or file gets whole lines); no markup, so text from records
    prints as it is."""
    bounded = sys.stdout.isatty() or environment().get("COLUMNS", "").strip().isdigit()
    return _Console(highlight=False, markup=False, emoji=False, width=None if bounded else 100_000)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """A closed reader ends the command as ``cli.main`` ends it (exit 141), not as
        rich's own handling does (exit 1)."""
        raise BrokenPipeError


def _floor(column: Column, title: str, column_cells: list[str], natural: int) -> int:
    """How narrow a column may get: numbers and times keep every cell whole (their
    header wraps at its spaces); text and identifiers are cut to a few characters."""
    word = max((len(part) for part in title.split()), default=0)
    if column.kind is Kind.TEXT:
        return min(natural, max(MIN_TEXT_CHARS, word))
    if column.kind is Kind.ID:
        return min(natural, MIN_ID_CHARS)
    return max([word, *(len(text) for text in column_cells)])


def _cut(widths: list[int | None], which: list[int], floors: list[int], excess: int) -> int:
    """Narrow the columns ``which``, the widest first, down to their floors, until
    ``excess`` characters are gone; returns what is still in excess."""
    while excess > 0:
        cuttable = [i for i in which if (widths[i] or 0) > floors[i]]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: widths[i] or 0)
        runner_up = max(((widths[i] or 0) for i in cuttable if i != widest), default=0)
        current = widths[widest] or 0
        cut = max(min(excess, current - max(floors[widest], runner_up)), 1)
        widths[widest] = current - cut
        excess -= cut
    return excess


def _fit(
    columns: Sequence[Column], titles: list[str], cells: list[list[str]], width: int
) -> list[int | None]:
    """Column widths within ``width`` (None: the column is left out). In order, until
    the table fits: free text is cut to 24 characters, the widest column first; the
    headers of numbers and times wrap; free text is cut further, to 6; identifiers are
    cut to 8 characters; free-text columns are left out, the last first. A number or a
    time is never cut: past that, lines are longer than ``width``."""
    count = len(columns)
    natural = [max([len(titles[i]), *(len(row[i]) for row in cells)]) for i in range(count)]
    floors = [
        _floor(column, titles[i], [row[i] for row in cells], natural[i])
        for i, column in enumerate(columns)
    ]
    widths: list[int | None] = list(natural)

    def excess() -> int:
        shown = [w for w in widths if w is not None]
        return sum(shown) + COLUMN_GAP * (len(shown) - 1) - width

    roomy = [max(floor, min(natural[i], ROOMY_TEXT_CHARS)) for i, floor in enumerate(floors)]
    for kinds, down_to in (
        ({Kind.TEXT}, roomy),
        (NUMERIC_KINDS, floors),
        ({Kind.TEXT}, floors),
        ({Kind.ID}, floors),
    ):
        _cut(widths, [i for i in range(count) if columns[i].kind in kinds], down_to, excess())
    for i in reversed(range(count)):
        if excess() <= 0:
            break
        if columns[i].kind is Kind.TEXT and sum(w is not None for w in widths) > 1:
            widths[i] = None
    return widths


def build_table(
    columns: Sequence[Column],
    items: Sequence[Mapping[str, Any]],
    *,
    width: int,
    utc: bool = False,
    title: str | None = None,
) -> Table:
    """The rich table of ``items``, at most ``width`` wide unless its numbers and
    times alone are wider (never a number cut); a caption names the columns left out."""
    titles = [column.title(utc=utc) for column in columns]
    cells = [[cell(item, column, utc=utc) for column in columns] for item in items]
    widths = _fit(columns, titles, cells, width)
    hidden = [titles[i] for i, w in enumerate(widths) if w is None]
    table = Table(
        title=title,
        caption=f"left out at this width: {', '.join(hidden)} (--json has them)"
        if hidden
        else None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        header_style="bold",
        title_style="bold",
        caption_style="dim",
    )
    shown = [i for i, w in enumerate(widths) if w is not None]
    for i in shown:
        table.add_column(
            Text(titles[i], no_wrap=False, overflow="fold"),
            justify="left" if columns[i].kind in (Kind.TEXT, Kind.ID, Kind.TIME) else "right",
            width=widths[i],
            no_wrap=True,
            overflow="ellipsis",
        )
    for row in cells:
        table.add_row(*(Text(row[i], style="dim" if row[i] == UNPRICED else "") for i in shown))
    return table


def table_width(table: Table) -> int:
    """The characters one line of ``table`` takes (its columns have fixed widths)."""
    return sum(column.width or 0 for column in table.columns) + COLUMN_GAP * (
        len(table.columns) - 1
    )


def print_table(
    columns: Sequence[Column],
    items: Sequence[Mapping[str, Any]],
    *,
    utc: bool = False,
    title: str | None = None,
    footer: str | None = None,
    empty: str = "nothing to show",
    console: Console | None = None,
) -> None:
    """The table and its footer, or only the ``empty`` line when there are no items."""
    out = console or new_console()
    if not items:
        out.print(Text(empty))
        return
    table = build_table(columns, items, width=out.width, utc=utc, title=title)
    needed, width = table_width(table), out.width
    # Numbers alone wider than the terminal: whole lines, which the terminal wraps.
    out.width = max(width, needed)
    try:
        if out.is_terminal:
            out.print(table, crop=False)
        else:  # a file or pipe gets lines without the padding of the last column
            with out.capture() as captured:
                out.print(table, crop=False)
            out.file.write("".join(f"{line.rstrip()}\n" for line in captured.get().splitlines()))
    finally:
        out.width = width
    if footer:
        out.print(Text(footer))


# ---------------------------------------------------------------------------- JSON


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: an unknown, so null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(value: object) -> str:
    """``value`` as JSON, NaN and infinities as null. Most values hold none: they are
    encoded as they are (in C), and only a refusal (a non-finite float, or a mapping
    json does not know) pays for the walk that replaces them, with the same result."""
    try:
        return json.dumps(value, default=_json_default, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_finite(value), default=_json_default, allow_nan=False)


def write_object(value: Mapping[str, Any]) -> None:
    """One JSON object, for a command whose result is not a list."""
    print(dumps(value), flush=True)


def write_list(
    items: Iterable[Mapping[str, Any]],
    next_cursor: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> None:
    """The one list shape: ``{"items": [...], "next_cursor": ...}``, also when empty;
    ``context`` adds keys that say what the list covers (``{"namespace": "prod"}``)."""
    print(dumps({"items": list(items), "next_cursor": next_cursor, **(context or {})}), flush=True)


def write_encoded_list(
    items: Sequence[str], next_cursor: str | None = None, context: Mapping[str, Any] | None = None
) -> None:
    """:func:`write_list` of items already encoded (each as :func:`dumps` writes it)."""
    rest = dumps({"next_cursor": next_cursor, **(context or {})})
    print(f'{{"items": [{", ".join(items)}], {rest[1:]}', flush=True)


def write_jsonl(items: Iterable[Mapping[str, Any]]) -> int:
    """One JSON object per line, each printed as it comes; returns how many."""
    count = 0
    for item in items:
        print(dumps(item), flush=True)
        count += 1
    return count


def emit(
    args: argparse.Namespace,
    columns: Sequence[Column],
    items: Sequence[Mapping[str, Any]],
    *,
    next_cursor: str | None = None,
    footer: str | None = None,
    empty: str = "nothing to show",
    title: str | None = None,
    default_sort: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> None:
    """A list command's output: ``--json``, ``--jsonl`` or the table with its footer,
    in the order ``--sort`` (else ``default_sort``) asks for; ``context`` goes into the
    ``--json`` object beside ``items`` (see :func:`write_list`)."""
    rows = ordered(args, items, columns, default_sort)
    if getattr(args, "json", False):
        write_list(rows, next_cursor, context)
    elif getattr(args, "jsonl", False):
        write_jsonl(rows)
    else:
        print_table(
            columns,
            rows,
            utc=getattr(args, "utc", False),
            title=title,
            footer=footer,
            empty=empty,
        )


# ---------------------------------------------------------------------------- footers


def count_of(count: int, singular: str, plural: str | None = None) -> str:
    """``1 dead letter``, ``2,505 dead letters``."""
    noun = singular if count == 1 else (plural or f"{singular}s")
    return f"{count:,} {noun}"


def footer(shown: int, total: int | None, singular: str, plural: str | None = None) -> str:
    """What a table holds, truthfully: ``showing 3 of 2,505 dead letters``, or
    ``2,505 dead letters`` when it holds them all; with ``total`` None (not counted),
    ``showing 3 dead letters; more follow``."""
    if total is None:
        return f"showing {count_of(shown, singular, plural)}; more follow"
    if shown >= total:
        return count_of(total, singular, plural)
    noun = singular if total == 1 else (plural or f"{singular}s")
    return f"showing {shown:,} of {total:,} {noun}"
