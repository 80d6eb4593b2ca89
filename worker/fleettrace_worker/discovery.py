"""Finding the input streams of a namespace: one pair per producer, found by SCAN.

Each producer identity writes its own streams (``{ns}:p:<producer>:traces`` and
``:metrics``), so the worker cannot know them in advance: it walks the keyspace with
``SCAN MATCH {ns}:p:* TYPE stream`` (a key of another type under a producer's prefix,
which an agent could make, is not a stream and is skipped), keeps the names that are
exactly a producer's trace or metric stream, and adds their producers to
``{ns}:producers``, the set readers sum over. That set is written by the worker only
(agents have no right on it): no agent can hide another producer from the readers or
make the worker read keys of its choosing. Nothing is ever removed from it.

The streams of the layout before per-producer keys (``{ns}:traces``, ``{ns}:metrics``)
are read too while they exist, so entries written by emitters of the previous release
during an upgrade are stored (docs/reference/observability.md).

A walk costs one round trip per ``DISCOVER_SCAN_COUNT`` keys of the whole database;
the worker repeats it every ``DISCOVER_INTERVAL_S`` (and the trim tick), not per read.
"""

from __future__ import annotations

from typing import Any

import redis

from fleettrace.keys import DISCOVER_SCAN_COUNT, PRODUCER_KEY_PART, Keys
from fleettrace.redis_errors import translate_redis_errors


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def discover_streams(
    client: redis.Redis, keys: Keys, *, count: int = DISCOVER_SCAN_COUNT, register: bool = True
) -> list[str]:
    """Every input stream of the namespace: the legacy ones that exist, then each
    producer's, sorted. With ``register``, the producers found are added to
    ``keys.producers``."""
    match = f"{keys.prefix}:{PRODUCER_KEY_PART}:*"
    found: set[str] = set()
    with translate_redis_errors("looking for producer streams"):
        cursor = 0
        while True:
            reply: Any = client.scan(cursor, match=match, count=count, _type="stream")
            cursor = int(reply[0])
            for raw in reply[1]:
                name = _text(raw)
                if keys.producer_of(name) is not None:
                    found.add(name)
            if cursor == 0:
                break
        pipe = client.pipeline(transaction=False)
        for stream in keys.legacy_streams:
            pipe.type(stream)
        kinds = pipe.execute()
        legacy = [
            stream
            for stream, kind in zip(keys.legacy_streams, kinds, strict=True)
            if _text(kind) == "stream"
        ]
        producers = sorted({p for p in (keys.producer_of(s) for s in found) if p is not None})
        if register and producers:
            client.sadd(keys.producers, *producers)
    return legacy + sorted(found)
