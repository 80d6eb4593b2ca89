"""Reading the worker's aggregates: one round trip instead of one command per producer.

A running worker keeps each counter summed over the producers, each contribution
clamped at zero, in keys only it writes (``{ns}:agg:*``, see
worker/fleettrace_worker/aggregator.py), and marks them fresh
(``Keys.aggregate_fresh``) after each tick. Each reader here asks for the mark and
for the aggregate in the same pipeline; when the mark is missing (no worker has run
in the last ``AGGREGATE_FRESH_MS``) it returns None and the caller sums the
producers' hashes itself, as before. The aggregates lag the producers' hashes by at
most one worker tick (``AGGREGATE_INTERVAL_S``) plus the tick's own time.

The worker also keeps a snapshot of every fleet-wide live series built from the live
aggregates (``Keys.aggregate_snapshot``): :func:`snapshot_fields` hands its payload to
``read_live`` only while the mark is there, the snapshot was built from the
aggregates' current version (each fold that changes a live aggregate bumps it, in the
same script) and no hash of the previous layout exists; otherwise the reader falls
back to the aggregate hashes. The snapshot expires ``SNAPSHOT_TTL_MS`` after it was
built, and a running worker rebuilds it at least every ``SNAPSHOT_REFRESH_MS``.

The hashes of the layout before per-producer keys (``{ns}:live:*``, ``{ns}:plan:*``)
are not in the aggregates: the readers add them, clamped, from the same pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from fleettrace.keys import SNAPSHOT_BUILT, SNAPSHOT_SERIES, SNAPSHOT_VERSION, Keys, unescape_value
from fleettrace.metrics import MetricKey

Hash = Mapping[bytes, bytes] | Mapping[str, str]


def live_hashes(
    client: redis.Redis, keys: Keys, metric_keys: Sequence[str]
) -> list[list[Hash]] | None:
    """Per metric key, [its aggregate, the legacy hash]; None when not fresh."""
    pipe = client.pipeline(transaction=False)
    pipe.exists(keys.aggregate_fresh)
    for key in metric_keys:
        pipe.hgetall(keys.aggregate_live(key))
        pipe.hgetall(keys.legacy_live(key))
    found = pipe.execute()
    if not found[0]:
        return None
    return [[found[1 + 2 * i], found[2 + 2 * i]] for i in range(len(metric_keys))]


def snapshot_fields(client: redis.Redis, keys: Keys) -> bytes | None:
    """The worker's snapshot of the fleet-wide live series (``fleettrace.live`` decodes
    it), in one round trip; None when the aggregates are not fresh, the snapshot is
    gone or behind the aggregates, or hashes of the previous layout exist (which only
    the readers add)."""
    pipe = client.pipeline(transaction=False)
    pipe.exists(keys.aggregate_fresh)
    pipe.hgetall(keys.aggregate_snapshot)
    pipe.exists(*(keys.legacy_live(key) for key in _fleet_keys()))
    fresh, snapshot, legacy = pipe.execute()
    if not fresh or legacy or not snapshot:
        return None
    fields = {_bytes(name): _bytes(value) for name, value in snapshot.items()}
    built = fields.get(SNAPSHOT_BUILT.encode())
    if built is None or built != fields.get(SNAPSHOT_VERSION.encode(), b"0"):
        return None
    return fields.get(SNAPSHOT_SERIES.encode())


def _bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw


def _fleet_keys() -> list[str]:
    return [key.value for key in MetricKey if not key.spec.per_plan]


def plan_hashes(client: redis.Redis, keys: Keys, plan_id: str) -> list[Hash] | None:
    """[the plan's aggregate, its legacy hash]; None when not fresh."""
    pipe = client.pipeline(transaction=False)
    pipe.exists(keys.aggregate_fresh)
    pipe.hgetall(keys.aggregate_plan(plan_id))
    pipe.hgetall(keys.legacy_plan(plan_id))
    found = pipe.execute()
    return found[1:] if found[0] else None


def ranked_plans(client: redis.Redis, keys: Keys, limit: int) -> tuple[list[str], int] | None:
    """(the ``limit`` costliest plan ids, how many plans are live); None when not fresh."""
    pipe = client.pipeline(transaction=False)
    pipe.exists(keys.aggregate_fresh)
    pipe.zrevrange(keys.aggregate_plan_costs, 0, limit - 1)
    pipe.zcard(keys.aggregate_plan_costs)
    fresh, members, total = pipe.execute()
    if not fresh:
        return None
    plans = [unescape_value(m.decode() if isinstance(m, bytes) else m) for m in members]
    return plans, int(total)


def aggregated_plans(client: redis.Redis, keys: Keys, plan_ids: Sequence[str]) -> list[Hash]:
    """The aggregates of ``plan_ids``, in order (empty for one that expired)."""
    pipe = client.pipeline(transaction=False)
    for plan_id in plan_ids:
        pipe.hgetall(keys.aggregate_plan(plan_id))
    return list(pipe.execute())
