"""Durations and points in time as people type them on the command line: ``30d``,
``12h``, ``2026-03-01T12:00:00Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from fleettrace.errors import ConfigurationError

_DURATION_RE: Final = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> timedelta:
    """A whole number and one unit among s, m, h, d, w; ConfigurationError otherwise."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ConfigurationError(
            f"{text!r} is not a duration: use a whole number and one of s, m, h, d, w "
            "(for example 30d or 12h)"
        )
    return timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """A duration means that long before ``now``; otherwise an ISO 8601 time, UTC when
    it names no zone."""
    if _DURATION_RE.match(text):
        return (now or datetime.now(UTC)) - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"{text!r} is neither a duration (30m, 12h, 7d) nor an ISO 8601 time "
            "(2026-03-01T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
