"""A short history of the fleet's cumulative LLM totals, so the live counters (which
only ever grow) can answer for a window: the last hour, today, the last 24 hours.

Once a minute the worker's aggregation tick of each shard (:mod:`fleettrace.shards`;
one in a namespace without shards) reads that shard's totals from the live aggregates
it keeps, plus the hashes of the layout before per-producer keys, summed as
:func:`fleettrace.live.read_live` sums them (calls are the count of ``llm.latency_ms``,
priced calls and cost the count and sum of ``llm.cost_usd``, failed calls the count of
``llm.errors_count``, retried calls the count of ``llm.retries_count``, every model
summed) and stores them as one member of the shard's sorted set
``Keys.aggregate_history``, scored by the minute (Unix seconds). One script adds the
sample only when the minute has none yet (so two workers store one), and drops the
samples older than ``HISTORY_KEEP_S``. Only workers write it.

A window's figures are the totals now (every shard) less the sum of each shard's
sample at its start: the newest sample at or before the start, so the window reaches
back to that sample's minute (the latest of the shards' minutes is ``from``).
The window is ``complete`` when that sample is less than two minutes before the start
(one minute without a sample is allowed); otherwise (no worker ran then) it counts
from that older sample, or, when the history does not reach back to the start (a
worker started within the window), from the oldest sample, and the answer says from
when (``from``). With no sample at all (of any shard) there are no figures.
A total lower than the sample's (counters a producer's hashes no longer hold) counts 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import redis

from fleettrace.keys import Keys, split_live_field
from fleettrace.live import LiveSeries, key_series
from fleettrace.metrics import MetricKey
from fleettrace.producers import merge_fields
from fleettrace.shards import shard_keys

#: One sample per this many seconds (a minute), kept this long (25 hours).
HISTORY_INTERVAL_S: Final = 60
HISTORY_KEEP_S: Final = 25 * 3600

#: KEYS: the history. ARGV: the minute, the sample, the oldest minute kept. 1 if added.
RECORD_LUA: Final = r"""
if redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1]) > 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class Totals:
    """The fleet's LLM calls counted so far (every provider and model summed)."""

    calls: int = 0
    priced_calls: int = 0
    cost_usd: float = 0.0
    errors: int = 0
    retried: int = 0

    @classmethod
    def of(cls, series: Iterable[LiveSeries]) -> Totals:
        calls = priced = errors = retried = 0
        cost = 0.0
        for one in series:
            if one.key is MetricKey.LLM_LATENCY_MS:
                calls += one.count
            elif one.key is MetricKey.LLM_COST_USD:
                priced += one.count
                cost += one.sum
            elif one.key is MetricKey.LLM_ERRORS_COUNT:
                errors += one.count
            elif one.key is MetricKey.LLM_RETRIES_COUNT:
                retried += one.count
        return cls(calls, priced, cost, errors, retried)

    def since(self, earlier: Totals) -> Totals:
        """What was counted after ``earlier``, each figure at least 0."""
        return Totals(
            max(self.calls - earlier.calls, 0),
            max(self.priced_calls - earlier.priced_calls, 0),
            max(self.cost_usd - earlier.cost_usd, 0.0),
            max(self.errors - earlier.errors, 0),
            max(self.retried - earlier.retried, 0),
        )


def _decode(member: bytes | str) -> Totals | None:
    try:
        found = orjson.loads(member)
        return Totals(
            int(found["calls"]),
            int(found["priced_calls"]),
            float(found["cost_usd"]),
            int(found["errors"]),
            int(found["retried"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class History:
    """Writes one namespace's history (called by the aggregation's ticks)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._record = client.register_script(RECORD_LUA)
        self._minute = -1

    def record_due(self, now: float | None = None) -> bool:
        """Record the minute's sample unless this writer did already; whether stored."""
        now = time.time() if now is None else now
        minute = int(now // HISTORY_INTERVAL_S * HISTORY_INTERVAL_S)
        if minute == self._minute:
            return False
        stored = self.record(now)
        self._minute = minute
        return stored

    def record(self, now: float | None = None) -> bool:
        """Store the totals now as the sample of this minute, unless it has one."""
        now = time.time() if now is None else now
        minute = int(now // HISTORY_INTERVAL_S * HISTORY_INTERVAL_S)
        totals = Totals.of(self._series())
        member = orjson.dumps({"t": minute, **asdict(totals)})
        args: list[int | bytes] = [minute, member, minute - HISTORY_KEEP_S]
        return bool(self._record(keys=[self.keys.aggregate_history], args=args))

    def _series(self) -> list[LiveSeries]:
        """This shard's series of the four keys: its aggregates and the legacy hashes."""
        pipe = self.client.pipeline(transaction=False)
        for key in _TOTAL_KEYS:
            pipe.hgetall(self.keys.aggregate_live(key.value))
            pipe.hgetall(self.keys.legacy_live(key.value))
        found = pipe.execute()
        series: list[LiveSeries] = []
        for i, key in enumerate(_TOTAL_KEYS):
            summed, legacy = found[2 * i], found[2 * i + 1]
            series += key_series(key, merge_fields([summed, legacy], _stat) if legacy else summed)
        return series


_TOTAL_KEYS: Final = (
    MetricKey.LLM_LATENCY_MS,
    MetricKey.LLM_COST_USD,
    MetricKey.LLM_ERRORS_COUNT,
    MetricKey.LLM_RETRIES_COUNT,
)


def _stat(name: str) -> str:
    return split_live_field(name)[1]


@dataclass(frozen=True, slots=True)
class Window:
    """A window's figures from the live counters: from ``start`` (the sample's
    minute) to now; ``complete`` when the history reaches back to ``asked``."""

    name: str
    asked: float
    start: float | None
    complete: bool
    figures: Totals | None

    def item(self, now: float) -> dict[str, Any]:
        """The window as the API answers it (docs/dashboard.md)."""
        out: dict[str, Any] = {
            "window": self.name,
            "start": _iso(self.asked),
            "from": None if self.start is None else _iso(self.start),
            "complete": self.complete,
        }
        found = self.figures
        if found is None or self.start is None:
            return {**out, **dict.fromkeys(_FIGURES)}
        calls = found.calls
        minutes = max((now - self.start) / 60, 1.0)
        return {
            **out,
            "calls": calls,
            "calls_per_minute": calls / minutes,
            "cost_usd": found.cost_usd,
            "unpriced_calls": max(calls - found.priced_calls, 0),
            "error_rate": found.errors / calls if calls else None,
            "retry_rate": found.retried / calls if calls else None,
        }


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


_FIGURES: Final = (
    "calls",
    "calls_per_minute",
    "cost_usd",
    "unpriced_calls",
    "error_rate",
    "retry_rate",
)


def windows(
    client: redis.Redis,
    keys: Keys,
    current: Totals,
    starts: Sequence[tuple[str, float]],
) -> list[Window]:
    """Each (name, start in Unix seconds) window's figures: ``current`` (every shard's
    totals) less the sum over the shards of the newest sample at or before its start,
    or of the oldest sample when none is."""
    shards = shard_keys(client, keys, "reading the history of the live counters")
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.zrange(shard.aggregate_history, 0, 0, withscores=True)
        for _, start in starts:
            pipe.zrevrangebyscore(
                shard.aggregate_history, math.floor(start), "-inf", start=0, num=1, withscores=True
            )
    found = pipe.execute()
    step = len(starts) + 1
    per_shard = [found[i * step : (i + 1) * step] for i in range(len(shards))]
    out = []
    for index, (name, start) in enumerate(starts):
        chosen = [(before[1 + index] or before[0]) for before in per_shard]
        if not all(chosen):
            out.append(Window(name, start, None, False, None))
            continue
        samples = [_decode(picked[0][0]) for picked in chosen]
        scores = [float(picked[0][1]) for picked in chosen]
        complete = all(
            before[1 + index] and start - score < 2 * HISTORY_INTERVAL_S
            for before, score in zip(per_shard, scores, strict=True)
        )
        figures = None
        if all(sample is not None for sample in samples):
            figures = current.since(_sum(sample for sample in samples if sample is not None))
        out.append(Window(name, start, max(scores), complete, figures))
    return out


def _sum(samples: Iterable[Totals]) -> Totals:
    total = Totals()
    for one in samples:
        total = Totals(
            total.calls + one.calls,
            total.priced_calls + one.priced_calls,
            total.cost_usd + one.cost_usd,
            total.errors + one.errors,
            total.retried + one.retried,
        )
    return total
