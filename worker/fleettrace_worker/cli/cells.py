"""The values of the command line's tables: what a column holds (``Column``, ``Kind``),
how one value reads (3 significant digits for durations, cents for dollars, local or
UTC times, ``unpriced`` and ``-`` for unknowns) and how rows sort (naturally,
``plan-2`` before ``plan-10``, by one or several columns). ``cli.render`` draws the
tables with these and re-exports them: commands import ``render`` only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

from fleettrace.errors import ConfigurationError

#: What a table shows for a cost nobody could price (``0.00`` would say free).
UNPRICED: Final = "unpriced"
#: What a table shows for any other unknown value.
UNKNOWN: Final = "-"
#: A text cell longer than this is cut even where the width is unbounded (a pipe): a
#: dead letter's record can be megabytes; --json has it whole.
MAX_CELL_CHARS: Final = 1000
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
    COUNT = "count"  # a whole number (or a list: its length): thousands separators
    DURATION = "duration"  # a duration: 3 significant digits
    NUMBER = "number"  # any other measure: exact if whole, else 3 significant digits
    USD = "usd"  # dollars: cents, tiny amounts 3 significant digits, None is unpriced
    PERCENT = "percent"  # a ratio (0.025) shown as a percentage (2.5)


NUMERIC_KINDS: Final = frozenset(
    {Kind.COUNT, Kind.DURATION, Kind.NUMBER, Kind.USD, Kind.PERCENT, Kind.TIME}
)


#: Units that decide the formatting of a column whose rows have units of their own.
_UNIT_KINDS: Final = {"USD": Kind.USD, "ms": Kind.DURATION, "s": Kind.DURATION}


@dataclass(frozen=True)
class Column:
    """One column: ``key`` names the item's field (dotted for a nested one, as
    ``group.model``) and is what ``--sort`` takes; ``unit`` goes in the header. A
    column whose rows differ in unit names the item's field holding it (``unit_key``):
    a row in USD then shows dollars, one in ms or s a duration, others ``kind``."""

    key: str
    header: str
    kind: Kind = Kind.TEXT
    unit: str | None = None
    unit_key: str | None = None

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
    """ISO 8601 local time (or UTC), to the second; the header names the clock, so the
    offset is not repeated in every row."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC) if utc else moment.astimezone()
    return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")


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
    if isinstance(value, list | tuple) and kind is Kind.COUNT:
        return f"{len(value):,}"
    if isinstance(value, int | float | Decimal) and kind in NUMERIC_KINDS:
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
    text = _CONTROL.sub(" ", str(value))
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def cell(item: Mapping[str, Any], column: Column, *, utc: bool = False) -> str:
    """What the table shows in ``column`` for ``item``."""
    value = lookup(item, column.key)
    kind = column.kind
    if column.unit_key is not None:
        if value is None:
            return UNKNOWN
        kind = _UNIT_KINDS.get(str(lookup(item, column.unit_key)), kind)
    return format_value(value, kind, utc=utc)


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


def text_sort_key(value: Any) -> tuple[tuple[int, int | str], ...]:
    """How a text column sorts ``value`` (a string, or a mapping shown as ``k=v,...``)."""
    return natural_key(format_value(value, Kind.TEXT))


def _sort_value(value: Any, kind: Kind) -> Any:
    if kind is Kind.TIME:
        return format_time(value, utc=True)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, list | tuple) and kind is Kind.COUNT:
        return float(len(value))
    return text_sort_key(value)


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
    """``items`` ordered by the columns ``spec`` names, comma-separated, the first
    deciding first (``-name``: descending), naturally for text; items without a value
    come last in either direction."""
    result = list(items)
    for part in reversed([p for p in spec.split(",") if p.strip()]):
        result = _sort_by(result, columns, part.strip())
    return result


def _sort_by(
    items: Sequence[Mapping[str, Any]], columns: Sequence[Column], spec: str
) -> list[Mapping[str, Any]]:
    descending = spec.startswith("-")
    column = find_column(columns, spec.lstrip("-"))
    values = [(lookup(item, column.key), item) for item in items]
    known = [pair for pair in values if pair[0] is not None]
    unknown = [item for value, item in values if value is None]
    # One sort value per distinct text: a column's values repeat (a key, a status).
    seen: dict[str, Any] = {}

    def text_key(value: Any) -> Any:
        text = format_value(value, Kind.TEXT)
        found = seen.get(text)
        if found is None:
            found = seen[text] = natural_key(text)
        return found

    def sort_value(value: Any) -> Any:
        if isinstance(value, str | Mapping) and column.kind is not Kind.TIME:
            return text_key(value)
        return _sort_value(value, column.kind)

    try:
        known.sort(key=lambda pair: sort_value(pair[0]), reverse=descending)
    except TypeError:  # mixed kinds of value in one column: compare as text
        known.sort(key=lambda pair: text_key(pair[0]), reverse=descending)
    return [item for _, item in known] + unknown
