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
- a table fits the terminal: free text is cut first, the widest column first, then
  identifiers down to a recognisable prefix; numbers and times are never cut. Output to
  a pipe or file is not cut unless ``COLUMNS`` says how wide it may be;
- times are local ISO 8601 times with their offset, UTC with ``--utc``;
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
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleettrace.errors import ConfigurationError

#: What a table shows for a cost nobody could price (``0.00`` would say free).
UNPRICED: Final = "unpriced"
#: What a table shows for any other unknown value.
UNKNOWN: Final = "-"
#: An identifier is never cut shorter than this: still enough to recognise it.
MIN_ID_CHARS: Final = 8
#: Free text is never cut shorter than this (or its header, if longer).
MIN_TEXT_CHARS: Final = 6
#: Characters between two columns: one of padding (collapsed) and the blank divider.
COLUMN_GAP: Final = 2
#: Below this, a dollar amount is "tiny" and shows 3 significant digits, not cents.
CENT: Final = 0.01
SIGNIFICANT_DIGITS: Final = 3

_NATURAL_PARTS: Final = re.compile(r"(\d+)")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")


class Kind(Enum):
    """What a column holds, which decides its formatting, alignment and cutting."""

    TEXT = "text"  # free text: cut first when the table is too wide
    ID = "id"  # an identifier: cut only after every text column, never below 8 chars
    TIME = "time"  # a datetime or ISO 8601 string: local time, UTC with --utc; never cut
    COUNT = "count"  # a whole number: thousands separators
    DURATION = "duration"  # a duration: 3 significant digits
    NUMBER = "number"  # any other measure: exact if whole, else 3 significant digits
    USD = "usd"  # dollars: cents, tiny amounts 3 significant digits, None is unpriced
    PERCENT = "percent"  # a ratio (0.025) shown as a percentage (2.5)


_NUMERIC: Final = frozenset(
    {Kind.COUNT, Kind.DURATION, Kind.NUMBER, Kind.USD, Kind.PERCENT, Kind.TIME}
)


@dataclass(frozen=True)
class Column:
    """One column: ``key`` names the item's field (dotted for a nested one, as
    ``group.model``) and is what ``--sort`` takes; ``unit`` goes in the header."""

    key: str
    header: str
    kind: Kind = Kind.TEXT
    unit: str | None = None

    @property
    def name(self) -> str:
        """The name ``--sort`` takes: the key's last part."""
        return self.key.rpartition(".")[2]

    def title(self, *, utc: bool = False) -> str:
        unit = self.unit
        if self.kind is Kind.TIME:
            unit = "UTC" if utc else "local"
        elif self.kind is Kind.PERCENT and unit is None:
            unit = "%"
        return f"{self.header} ({unit})" if unit else self.header


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
            help="sort by this column (its --json key); --sort=-COLUMN for descending",
        )
    if times:
        parser.add_argument("--utc", action="store_true", help="times in UTC, not local time")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json`` for a command that prints one result, not a list."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


# ---------------------------------------------------------------------------- values


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> str:
    """``value`` to ``digits`` significant digits, never in exponent notation
    (``0.000123``, ``10.7``, ``1,230``)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    rounded = float(f"{value:.{digits}g}")
    decimals = max(digits - 1 - math.floor(math.log10(abs(rounded))), 0)
    return f"{rounded:,.{decimals}f}"


def format_usd(value: float | None) -> str:
    if value is None:
        return UNPRICED
    if value == 0 or abs(value) >= CENT:
        return f"{value:,.2f}"
    return significant(value)


def format_time(value: datetime | str, *, utc: bool = False) -> str:
    """Local ISO 8601 time with its offset (or UTC), to the second."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC) if utc else moment.astimezone()
    return moment.isoformat(sep=" ", timespec="seconds")


def format_value(value: object, kind: Kind, *, utc: bool = False) -> str:
    """The cell a table shows for one JSON value of a column of ``kind``."""
    if kind is Kind.USD:
        return format_usd(None if value is None else float(value))  # type: ignore[arg-type]
    if value is None or value == "":
        return UNKNOWN
    if isinstance(value, bool):
        return "yes" if value else "no"
    if kind is Kind.TIME:
        return format_time(value, utc=utc)  # type: ignore[arg-type]
    if isinstance(value, int | float | Decimal) and kind in _NUMERIC:
        number = float(value)
        if kind is Kind.COUNT:
            return f"{int(value):,}"
        if kind is Kind.PERCENT:
            return significant(number * 100)
        if kind is Kind.NUMBER and number.is_integer():
            return f"{int(number):,}"
        return significant(number)
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v, Kind.TEXT) for v in value) or UNKNOWN
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items()) or UNKNOWN
    return _CONTROL.sub(" ", str(value))


def lookup(item: Mapping[str, Any], key: str) -> Any:
    """``item[key]``, following dots into nested objects; None when absent."""
    value: Any = item
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


# ---------------------------------------------------------------------------- order


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sorts ``plan-2`` before ``plan-10``: digit runs compare as numbers."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.casefold())
        for part in _NATURAL_PARTS.split(text)
        if part
    )


def _sort_value(value: Any, kind: Kind) -> Any:
    if kind is Kind.TIME:
        return format_time(value, utc=True)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | Decimal):
        return float(value)
    return natural_key(format_value(value, Kind.TEXT))


def find_column(columns: Sequence[Column], name: str) -> Column:
    wanted = name.strip().lower().replace("-", "_")
    for column in columns:
        if wanted in (column.name.lower(), column.key.lower()):
            return column
    names = ", ".join(column.name for column in columns)
    raise ConfigurationError(f"--sort: no column {name!r}; one of: {names}")


def sort_items(
    items: Sequence[Mapping[str, Any]], columns: Sequence[Column], spec: str
) -> list[Mapping[str, Any]]:
    """``items`` ordered by the column ``spec`` names (``-name``: descending),
    naturally for text; items without a value come last in either direction."""
    descending = spec.startswith("-")
    column = find_column(columns, spec.lstrip("-"))
    known = [item for item in items if lookup(item, column.key) is not None]
    unknown = [item for item in items if lookup(item, column.key) is None]
    try:
        known.sort(key=lambda item: _sort_value(lookup(item, column.key), column.kind))
    except TypeError:  # mixed kinds of value in one column: compare as text
        known.sort(key=lambda item: natural_key(format_value(lookup(item, column.key), Kind.TEXT)))
    if descending:
        known.reverse()
    return known + unknown


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
    bounded = sys.stdout.isatty() or os.environ.get("COLUMNS", "").strip().isdigit()
    return _Console(highlight=False, markup=False, emoji=False, width=None if bounded else 100_000)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """A closed reader ends the command as ``cli.main`` ends it (exit 141), not as
        rich's own handling does (exit 1)."""
        raise BrokenPipeError


def _fit(widths: list[int], columns: Sequence[Column], room: int) -> list[int]:
    """Column widths that fit ``room``: free text first, then identifiers, always the
    widest column of the kind being cut; numbers and times keep their width."""
    widths = list(widths)
    for kind, floor in ((Kind.TEXT, MIN_TEXT_CHARS), (Kind.ID, MIN_ID_CHARS)):
        mins = [
            min(widths[i], max(floor, len(c.header) if kind is Kind.TEXT else floor))
            for i, c in enumerate(columns)
        ]
        while sum(widths) > room:
            cuttable = [i for i, c in enumerate(columns) if c.kind is kind and widths[i] > mins[i]]
            if not cuttable:
                break
            widest = max(cuttable, key=lambda i: widths[i])
            runner_up = max((widths[i] for i in cuttable if i != widest), default=0)
            cut = min(sum(widths) - room, widths[widest] - max(mins[widest], runner_up))
            widths[widest] -= max(cut, 1)
    return widths


def build_table(
    columns: Sequence[Column],
    items: Sequence[Mapping[str, Any]],
    *,
    width: int,
    utc: bool = False,
    title: str | None = None,
) -> Table:
    """The rich table of ``items`` at most ``width`` wide when free text and
    identifiers can be cut enough; wider (never a number cut) when they cannot."""
    titles = [column.title(utc=utc) for column in columns]
    cells = [
        [format_value(lookup(item, column.key), column.kind, utc=utc) for column in columns]
        for item in items
    ]
    natural = [max([len(titles[i]), *(len(row[i]) for row in cells)]) for i in range(len(columns))]
    room = width - COLUMN_GAP * (len(columns) - 1)
    widths = _fit(natural, columns, room)
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        header_style="bold",
        title_style="bold",
    )
    for column, header, column_width in zip(columns, titles, widths, strict=True):
        table.add_column(
            Text(header, overflow="ellipsis", no_wrap=True),
            justify="left" if column.kind in (Kind.TEXT, Kind.ID, Kind.TIME) else "right",
            width=column_width,
            no_wrap=True,
            overflow="ellipsis",
        )
    for row in cells:
        table.add_row(*(Text(cell, style="dim" if cell == UNPRICED else "") for cell in row))
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
    """The table, or the ``empty`` line when there are no items; then the footer."""
    out = console or new_console()
    if not items:
        out.print(Text(empty))
    else:
        table = build_table(columns, items, width=out.width, utc=utc, title=title)
        needed, width = table_width(table), out.width
        # Numbers alone wider than the terminal: whole lines, which the terminal wraps.
        out.width = max(width, needed)
        try:
            out.print(table, crop=False)
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
    return json.dumps(_finite(value), default=_json_default, allow_nan=False)


def write_object(value: Mapping[str, Any]) -> None:
    """One JSON object, for a command whose result is not a list."""
    print(dumps(value), flush=True)


def write_list(items: Iterable[Mapping[str, Any]], next_cursor: str | None = None) -> None:
    """The one list shape: ``{"items": [...], "next_cursor": ...}``, also when empty."""
    print(dumps({"items": list(items), "next_cursor": next_cursor}), flush=True)


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
) -> None:
    """A list command's output: ``--json``, ``--jsonl`` or the table with its footer,
    in the order ``--sort`` (else ``default_sort``) asks for."""
    rows = ordered(args, items, columns, default_sort)
    if getattr(args, "json", False):
        write_list(rows, next_cursor)
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
