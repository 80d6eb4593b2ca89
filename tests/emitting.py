"""Helpers of the emitter, hooks and live tests: make an emitter, read back what it wrote."""

from __future__ import annotations

from typing import Any

import redis

from fleettrace.codec import decode_entry
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys, split_live_field
from fleettrace.model import LLMTrace, MetricSample


def make_emitter(redis_url: str, keys: Keys, **settings: Any) -> Emitter:
    settings.setdefault("flush_interval_s", 0.01)
    return Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace, **settings))


def delete_namespace(redis_url: str, keys: Keys) -> None:
    """Delete every key of a namespace, its shards' included (a test's, or one a command
    left for its user)."""
    client = redis.Redis.from_url(redis_url)
    try:
        for match in (f"{keys.prefix}*", "{" + keys.namespace + ":*"):
            for key in client.scan_iter(match=match, count=1000):
                client.delete(key)
    finally:
        client.close()


def stream_records(client: redis.Redis, stream: str) -> list[LLMTrace | MetricSample]:
    """Every record of a stream, decoded; fails on any entry or record error."""
    records: list[LLMTrace | MetricSample] = []
    for _, fields in client.xrange(stream):
        batch = decode_entry(fields)
        assert batch.errors == []
        records.extend(batch.records)
    return records


def live_hash(client: redis.Redis, keys: Keys, metric_key: str) -> dict[tuple[str, str], str]:
    """A live hash as {(encoded labels, stat): value}."""
    return {
        split_live_field(field.decode()): value.decode()
        for field, value in client.hgetall(keys.live(metric_key)).items()
    }


def emitter_figures(client: redis.Redis, keys: Keys) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.emitter).items()}
