"""The Overview's health figures from Redis: what the emitters dropped, and whether the
workers are ready.

Dropped records are the emitters' own figures: each producer's emitter hash
(``{ns}:p:<producer>:emitter``, fields ``records``, ``batches``, ``dropped``), which the
batch script adds to with every batch, so a record dropped before any batch reached
Redis is counted with the next one that does. The producers are the worker's set plus
the reader's own (:func:`fleettrace.producers.known_producers`); an agent may write any
value into its own hash, so each figure is clamped at zero like every summed counter.

Readiness is the health snapshot each worker writes every few seconds
(``{ns}:worker:<consumer>``, expiring ``WORKER_HEALTH_TTL_S`` after its last write): the
same test as ``fleettrace worker --check`` (:func:`fleettrace_worker.presence`), a
worker that said it was ready within ``HEALTH_FRESH_S``. A killed worker's key outlives
it by its TTL and shows as stale, then goes.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

import redis

from fleettrace.cluster import slot_scan
from fleettrace.keys import (
    EMITTER_BATCHES,
    EMITTER_DROPPED,
    EMITTER_RECORDS,
    Keys,
    glob_escape,
)
from fleettrace.producers import clamped, known_producers
from fleettrace.shards import shard_keys
from fleettrace_worker.presence import HEALTH_FRESH_S

#: The most worker health keys the Overview lists (a namespace has a few workers).
MAX_WORKERS: Final = 100
_FIGURES: Final = (EMITTER_RECORDS, EMITTER_BATCHES, EMITTER_DROPPED)


def emitter_figures(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Per producer with an emitter hash: records sent, batches and records dropped,
    summed over the shards it wrote to (docs/scaling.md); and the dropped total."""
    found: dict[str, dict[str, int]] = {}
    for shard in shard_keys(client, keys):
        producers = known_producers(client, shard)
        pipe = client.pipeline(transaction=False)
        for producer in producers:
            pipe.hmget(shard.for_producer(producer).emitter, list(_FIGURES))
        for producer, values in zip(producers, pipe.execute(), strict=True):
            if all(v is None for v in values):
                continue
            figures = found.setdefault(producer, dict.fromkeys(_FIGURES, 0))
            for name, value in zip(_FIGURES, values, strict=True):
                figures[name] += int(clamped(value))
    items = [{"producer": producer, **found[producer]} for producer in sorted(found)]
    return {"dropped": sum(i[EMITTER_DROPPED] for i in items), "emitters": items}


def workers(client: redis.Redis, keys: Keys, now: float | None = None) -> list[dict[str, Any]]:
    """Each worker whose health key is in Redis, by consumer name: whether it said it
    was ready, how old that is, and ``ready`` (said so within ``HEALTH_FRESH_S``)."""
    now = time.time() if now is None else now
    head = keys.worker_health("")
    found: list[str] = []
    cursor = 0
    while True:  # on a Redis Cluster, only the master that serves the namespace's slot
        cursor, batch = slot_scan(client, head, cursor, match=glob_escape(head) + "*", count=1000)
        found += (
            raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw) for raw in batch
        )
        if cursor == 0 or len(found) >= MAX_WORKERS * 10:
            break
    names = sorted(found)[:MAX_WORKERS]
    values = client.mget(names) if names else []
    items = []
    for name, raw in zip(names, values, strict=True):
        try:
            health = json.loads(raw) if raw is not None else None
        except ValueError:
            health = None
        if not isinstance(health, dict):
            health = {}
        updated = health.get("updated_at")
        age = now - updated if isinstance(updated, int | float) else None
        said_ready = health.get("ready") is True
        items.append(
            {
                "consumer": name[len(head) :],
                "said_ready": said_ready,
                "age_s": age,
                "ready": said_ready and age is not None and age <= HEALTH_FRESH_S,
            }
        )
    return items
