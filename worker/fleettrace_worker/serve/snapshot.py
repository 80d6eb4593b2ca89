"""The snapshot of the fleet's live series: built by the worker from its live
aggregates, so a reader makes one HGETALL and decodes ready series instead of
reading every aggregate hash and building 1,000 series itself.

Every fold that changes a live aggregate bumps the aggregates' version (the
``version`` field of ``Keys.aggregate_snapshot``) in the same script. After each tick
the worker compares it with the version the stored snapshot was built from; when they
differ, or the snapshot is older than ``SNAPSHOT_REFRESH_MS``, it reads the version and
every live aggregate in one MULTI, builds the series exactly as a reader does from the
aggregates (:func:`fleettrace.live.key_series`), and stores them with the version they
came from, unless a fold bumped the version meanwhile (checked in the writing script,
so two workers never leave an older snapshot over a newer one). The snapshot expires
``SNAPSHOT_TTL_MS`` after it was built. Readers use it only when its version is the
current one (:func:`fleettrace.aggregates.snapshot_fields`): its figures are then
those of the aggregates, each producer's contribution clamped at zero there.
"""

from __future__ import annotations

import logging
from typing import Final

import redis

from fleettrace.keys import (
    SNAPSHOT_BUILT,
    SNAPSHOT_REFRESH_MS,
    SNAPSHOT_SERIES,
    SNAPSHOT_TTL_MS,
    SNAPSHOT_VERSION,
    Keys,
)
from fleettrace.live import LiveSeries, encode_snapshot, key_series
from fleettrace.metrics import MetricKey

log = logging.getLogger(__name__)

#: Store a snapshot built from version ARGV[1] unless the version moved on since.
#: KEYS: the snapshot hash. ARGV: version, series, lifetime (ms). Returns 1 if stored.
STORE_LUA: Final = f"""
local now = redis.call('HGET', KEYS[1], '{SNAPSHOT_VERSION}') or '0'
if now ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], '{SNAPSHOT_BUILT}', ARGV[1], '{SNAPSHOT_SERIES}', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_FLEET_KEYS: Final = tuple(key for key in MetricKey if not key.spec.per_plan)


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return "0"
    return raw.decode() if isinstance(raw, bytes) else raw


class Snapshot:
    """Keeps one namespace's snapshot current (called by the aggregation's ticks)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._store = client.register_script(STORE_LUA)

    def refresh(self) -> bool:
        """Rebuild the snapshot when the aggregates changed since it was built or it is
        older than SNAPSHOT_REFRESH_MS; whether one was stored."""
        key = self.keys.aggregate_snapshot
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(key, SNAPSHOT_VERSION)
        pipe.hget(key, SNAPSHOT_BUILT)
        pipe.pttl(key)
        version, built, left_ms = pipe.execute()
        current = built is not None and _text(version) == _text(built)
        if current and left_ms > SNAPSHOT_TTL_MS - SNAPSHOT_REFRESH_MS:
            return False
        return self.rebuild()

    def rebuild(self) -> bool:
        """Build the snapshot from the live aggregates and store it; whether stored
        (not when a fold changed them meanwhile, or a figure is not finite)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(self.keys.aggregate_snapshot, SNAPSHOT_VERSION)
        for key in _FLEET_KEYS:
            pipe.hgetall(self.keys.aggregate_live(key.value))
        version, *hashes = pipe.execute()
        series: list[LiveSeries] = []
        for key, fields in zip(_FLEET_KEYS, hashes, strict=True):
            series += key_series(key, fields)
        try:
            payload = encode_snapshot(series)
        except ValueError as error:
            log.debug("no snapshot of the live series: %s", error)
            return False
        keys = [self.keys.aggregate_snapshot]
        return bool(self._store(keys=keys, args=[_text(version), payload, SNAPSHOT_TTL_MS]))
