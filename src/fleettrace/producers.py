"""Summing what the producers of a namespace counted, so that none can lower the total.

Each producer identity writes its own counter hashes (``{ns}:p:<producer>:live:*``,
``{ns}:p:<producer>:plan:*``, see :mod:`fleettrace.keys`), and an agent holds every
right on its own keys: it can write any value there, negative ones included. A
reader therefore adds up the producers' hashes field by field with each producer's
contribution clamped at zero (a value that is not a finite number counts as zero),
so a compromised agent can inflate a figure, never deflate what the others counted.
Gauges (``value``) are not summed: the largest producer value is reported.

The producers are the members of ``{ns}:producers``, which only the worker writes
(it adds each producer whose stream it finds), plus the reader's own producer, so an
agent sees its own counts before a worker ran. Reading them is one ``SMEMBERS``;
readers then pipeline one command per producer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from fleettrace.keys import (
    STAT_BUCKET_PREFIX,
    STAT_COUNT,
    STAT_FINE_PREFIX,
    STAT_SUM_NANOS,
    STAT_SUM_WHOLE,
    STAT_VALUE,
    Keys,
    check_producer,
)

if TYPE_CHECKING:
    import redis  # annotations only: redis-py loads when a client is made

#: Stats reported as the largest producer value rather than summed.
MAX_STATS: Final = frozenset({STAT_VALUE})
#: Stats that hold whole numbers (counts, buckets, the sketch's fine buckets and the
#: exact sums' parts): summed as Python integers, never through a float, since they
#: can pass 2**53 (the sums' whole part does over millions of increments).
_INT_STATS: Final = frozenset({STAT_COUNT, STAT_SUM_WHOLE, STAT_SUM_NANOS})
_INT_PREFIXES: Final = (STAT_BUCKET_PREFIX, STAT_FINE_PREFIX)


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def known_producers(client: redis.Redis, keys: Keys) -> list[str]:
    """The producers whose counters a reader sums: the worker's set plus ``keys.producer``,
    sorted. A member that is not a valid identity is skipped."""
    found = {keys.producer}
    for raw in client.smembers(keys.producers) or ():
        name = _text(raw)
        try:
            found.add(check_producer(name))
        except ValueError:
            continue
    return sorted(found)


def clamped(raw: bytes | str | float | None) -> float:
    """One producer's contribution to a counter: its value when it is a finite number
    above zero, else zero."""
    if raw is None:
        return 0.0
    try:
        value = float(_text(raw)) if isinstance(raw, bytes | str) else float(raw)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _render(value: float, integral: bool) -> str:
    return str(int(value)) if integral and math.isfinite(value) else repr(value)


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def merge_fields(
    hashes: Iterable[Mapping[bytes, bytes] | Mapping[str, str]],
    stat_of: Callable[[str], str],
) -> dict[str, str]:
    """Fields of several producers' hashes merged into one: counts, sums and buckets
    summed with each contribution clamped at zero; gauge values (any finite number)
    the largest, so no producer's value hides another's.

    ``stat_of`` maps a field name to its stat; merged values are decimal strings
    (whole numbers stay whole), as a single hash would hold them.
    """
    totals: dict[str, float] = {}
    integral: dict[str, bool] = {}
    whole_totals: dict[str, int] = {}
    for fields in hashes:
        for raw_field, raw_amount in fields.items():
            name = _text(raw_field)
            text = _text(raw_amount)
            stat = stat_of(name)
            if stat in _INT_STATS or stat.startswith(_INT_PREFIXES):
                whole_totals[name] = whole_totals.get(name, 0) + _clamped_int(text)
                continue
            if stat in MAX_STATS:
                value = _finite(text)
                if value is None:
                    continue
                previous = totals.get(name)
                totals[name] = value if previous is None else max(previous, value)
            else:
                totals[name] = totals.get(name, 0.0) + clamped(text)
            # Counts and buckets are whole numbers whatever was written into them.
            whole = stat == STAT_COUNT or stat.startswith(STAT_BUCKET_PREFIX)
            integral[name] = whole or (integral.get(name, True) and _whole(text))
    merged = {name: _render(total, integral[name]) for name, total in totals.items()}
    merged.update((name, str(total)) for name, total in whole_totals.items())
    return merged


def _clamped_int(text: str) -> int:
    """One producer's contribution to a whole-number stat: the integer it holds when
    above zero, else zero (junk and negative values lower nothing)."""
    try:
        value = int(text)
    except ValueError:
        try:
            value = int(Decimal(text))  # "12.0", "1e+19": what HINCRBYFLOAT may render
        except (ArithmeticError, ValueError):
            return 0
    return max(value, 0)


def _whole(text: str) -> bool:
    """Whether ``text`` is an integer as Redis's HINCRBY writes it (or not a number at
    all, which contributes nothing)."""
    return text.lstrip("-").isdigit() or _finite(text) is None
