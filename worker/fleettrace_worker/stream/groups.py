"""Consumer groups as an operator sees them: who is behind, who is gone, and dropping one.

A stream is trimmed only below what every group on it still needs (``trim.py``), so
a group that nothing reads any more (LangSmith forwarding turned on once, then off)
holds the trim floor for ever and the stream grows until Redis refuses writes. This
module reports, per stream and group, the lag, the pending entries, the consumers
and when one was last seen, and how old the oldest entry the group still needs is.
A group past its limits (:class:`GroupLimits`) is *behind*: the worker says so in
its log (rate-limited) and on ``/metrics``, and ``fleettrace groups drop NAME``
removes a group that is not coming back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis

from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.stream.discovery import discover_streams

log = logging.getLogger(__name__)

#: A group is behind past this many undelivered entries (of one stream)...
DEFAULT_MAX_LAG: Final = 100_000
#: ...or when the oldest entry it still needs is older than this. LangSmith's retry
#: window is an hour by default, so a group an hour behind is past any outage.
DEFAULT_MAX_AGE_S: Final = 3600.0
#: The same group is warned about at most this often by one worker.
WARN_INTERVAL_S: Final = 300.0
#: ``groups drop`` refuses a group a consumer used this recently (still running).
ACTIVE_WITHIN_S: Final = 60.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _after(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


@dataclass(frozen=True, slots=True)
class GroupLimits:
    """When a group counts as behind; 0 switches a limit off."""

    max_lag: int = DEFAULT_MAX_LAG
    max_age_s: float = DEFAULT_MAX_AGE_S

    def __post_init__(self) -> None:
        if self.max_lag < 0 or self.max_age_s < 0:
            raise ConfigurationError("group limits must not be negative")


@dataclass(frozen=True, slots=True)
class ConsumerSeen:
    name: str
    pending: int
    idle_s: float


@dataclass(frozen=True, slots=True)
class GroupReport:
    """One group on one stream."""

    stream: str
    group: str
    lag: int | None
    pending: int
    consumers: tuple[ConsumerSeen, ...]
    last_delivered_id: str
    #: The oldest entry the group still needs (pending, else the next undelivered);
    #: None when it has everything.
    oldest_needed_id: str | None
    #: How old that entry is (0 when the group has everything).
    age_s: float

    @property
    def idle_s(self) -> float | None:
        """Since any consumer of the group last read or acknowledged (None: never had one)."""
        return min((c.idle_s for c in self.consumers), default=None)

    def behind(self, limits: GroupLimits) -> bool:
        lag_over = limits.max_lag > 0 and (self.lag or 0) > limits.max_lag
        age_over = limits.max_age_s > 0 and self.age_s > limits.max_age_s
        return lag_over or age_over


def loop_streams(loops: Sequence[object]) -> list[str] | None:
    """The streams the consumers of ``loops`` read (their own walks found them), so
    a caller needs no SCAN walk of its own (with 50,000 plan hashes in the database a
    walk took seconds); None when no loop has a consumer."""
    consumers = [c for c in (getattr(loop, "consumer", None) for loop in loops) if c is not None]
    if not consumers:
        return None
    return sorted({s for c in consumers for s in getattr(c, "streams", ())})


def inspect_groups(
    client: redis.Redis,
    keys: Keys,
    *,
    now_s: float | None = None,
    streams: Sequence[str] | None = None,
) -> list[GroupReport]:
    """Every group on every stream of the namespace (``streams``, else every
    producer's, found by a SCAN walk)."""
    now_ms = (time.time() if now_s is None else now_s) * 1000
    reports = []
    if streams is None:
        streams = discover_streams(client, keys, register=False)
    with translate_redis_errors("reading consumer groups"):
        for stream in streams:
            try:
                groups: Any = client.xinfo_groups(stream)
            except redis.ResponseError as error:
                if "no such key" in str(error).lower():
                    continue
                raise
            for info in groups:
                reports.append(_report(client, stream, info, now_ms))
    return reports


def _report(client: redis.Redis, stream: str, info: Any, now_ms: float) -> GroupReport:
    group = _text(info["name"])
    pending = int(info["pending"])
    last_delivered = _text(info["last-delivered-id"])
    raw_lag = info.get("lag")
    lag = None if raw_lag is None else int(raw_lag)
    consumers: Any = client.xinfo_consumers(stream, group)
    seen = tuple(
        ConsumerSeen(_text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000) for c in consumers
    )
    oldest: str | None = None
    if pending:
        summary: Any = client.xpending(stream, group)
        if summary["pending"]:
            oldest = _text(summary["min"])
    if oldest is None and lag != 0:
        # Nothing in hand: the next entry it has not been given (lag is None on
        # Redis 7 when entries were deleted in between; look instead of guessing).
        rows: Any = client.xrange(stream, min=_after(last_delivered), count=1)
        if rows:
            oldest = _text(rows[0][0])
    age_s = 0.0 if oldest is None else max(0.0, (now_ms - _ms(oldest)) / 1000)
    return GroupReport(stream, group, lag, pending, seen, last_delivered, oldest, age_s)


def drop_group(client: redis.Redis, keys: Keys, group: str) -> list[str]:
    """Destroy ``group`` on every stream of the namespace; returns the streams it was
    on. Its pending entries are forgotten with it (its dead letters stay)."""
    dropped = []
    streams = discover_streams(client, keys, register=False)
    with translate_redis_errors(f"dropping consumer group {group!r}"):
        for stream in streams:
            if client.exists(stream) and client.xgroup_destroy(stream, group):
                dropped.append(stream)
    return dropped


def active_consumers(
    reports: Sequence[GroupReport], group: str, within_s: float = ACTIVE_WITHIN_S
) -> list[ConsumerSeen]:
    """Consumers of ``group`` that read or acknowledged in the last ``within_s``."""
    return [
        consumer
        for report in reports
        if report.group == group
        for consumer in report.consumers
        if consumer.idle_s < within_s
    ]


def describe_behind(report: GroupReport) -> str:
    idle = report.idle_s
    seen = "has no consumer" if idle is None else f"last seen {idle:,.0f} s ago"
    lag = "unknown" if report.lag is None else f"{report.lag:,}"
    return (
        f"consumer group {report.group} on {report.stream} is behind: lag {lag} entries, "
        f"oldest entry it needs {report.age_s:,.0f} s old, {seen}. It holds the stream's "
        f"trim floor, so the stream grows until it catches up; if nothing runs it any "
        f"more, drop it: fleettrace groups drop {report.group}"
    )


class GroupWatch:
    """Warns about groups past their limits, at most once per group and stream per
    ``interval_s``, and remembers the last reports for ``/metrics``."""

    def __init__(
        self,
        limits: GroupLimits,
        interval_s: float = WARN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._warned: dict[tuple[str, str], float] = {}

    def check(self, reports: Sequence[GroupReport]) -> list[GroupReport]:
        """The reports that are behind; logs those not warned about lately."""
        behind = [report for report in reports if report.behind(self.limits)]
        now = self.clock()
        with self._lock:
            for report in behind:
                key = (report.stream, report.group)
                last = self._warned.get(key)
                if last is None or now - last >= self.interval_s:
                    self._warned[key] = now
                    log.warning("%s", describe_behind(report))
        return behind
