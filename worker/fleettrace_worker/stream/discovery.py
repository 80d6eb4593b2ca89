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

A whole walk costs one round trip per ``DISCOVER_SCAN_COUNT`` keys of the whole
database, and about a millisecond of Redis time per step (a million keys: a second).
So a running consumer does not repeat whole walks: :class:`StreamWalk` goes on with
one walk a few steps at a time (``DISCOVER_STEPS`` every ``DISCOVER_INTERVAL_S``),
which bounds the cost whatever the size of the database: a new producer is found
within a second on a small database, within a walk's time on a large one. A whole
walk happens at start, in burst mode, and when a stream went away. On a Redis Cluster
the walk covers the master that serves the namespace's hash slot (every key of a
namespace is there), not the whole cluster. In a sharded namespace ``keys`` is one
shard's, and the walk covers that shard's master; the shards themselves are found by
:mod:`fleettrace_worker.stream.shards`.
"""

from __future__ import annotations

import redis

from fleettrace.cluster import slot_node_name, slot_scan
from fleettrace.keys import PRODUCER_KEY_PART, Keys
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.keys import DISCOVER_SCAN_COUNT, DISCOVER_STEPS


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def discover_streams(
    client: redis.Redis, keys: Keys, *, count: int = DISCOVER_SCAN_COUNT, register: bool = True
) -> list[str]:
    """Every input stream of the namespace: the legacy ones that exist, then each
    producer's, sorted. With ``register``, the producers found are added to
    ``keys.producers``."""
    walk = StreamWalk(client, keys, count=count)
    with translate_redis_errors("looking for producer streams"):
        while not walk.advance(steps=None):
            pass
        found = walk.found
        legacy = legacy_streams(client, keys)
        if register:
            register_producers(client, keys, found)
    return legacy + sorted(found)


def legacy_streams(client: redis.Redis, keys: Keys) -> list[str]:
    """The streams of the previous layout that exist."""
    pipe = client.pipeline(transaction=False)
    for stream in keys.legacy_streams:
        pipe.type(stream)
    kinds = pipe.execute()
    return [
        stream
        for stream, kind in zip(keys.legacy_streams, kinds, strict=True)
        if _text(kind) == "stream"
    ]


def register_producers(client: redis.Redis, keys: Keys, streams: set[str]) -> None:
    """Add the producers of ``streams`` to the set readers sum over."""
    producers = sorted({p for p in (keys.producer_of(s) for s in streams) if p is not None})
    if producers:
        client.sadd(keys.producers, *producers)


class StreamWalk:
    """One SCAN walk over the database, taken a few steps at a time."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, count: int = DISCOVER_SCAN_COUNT
    ) -> None:
        self.client = client
        self.keys = keys
        self.count = count
        self.cursor = 0
        #: Producer streams met so far in this walk.
        self.found: set[str] = set()
        #: The cluster node the walk's cursor belongs to (None: a single Redis).
        self.node: str | None = None

    def advance(self, steps: int | None = DISCOVER_STEPS) -> bool:
        """Take up to ``steps`` SCAN steps (None: to the end); True when the walk is
        complete (the next call starts a new one). On a Redis Cluster the walk scans
        the master that serves the namespace's slot, where all its keys live, and
        starts again when another master took the slot over (a failover): a cursor
        means nothing to another node."""
        match = f"{self.keys.prefix}:{PRODUCER_KEY_PART}:*"
        node = slot_node_name(self.client, self.keys.producers)
        if node != self.node:
            self.restart()
            self.node = node
        taken = 0
        while steps is None or taken < steps:
            cursor, names = slot_scan(
                self.client,
                self.keys.producers,
                self.cursor,
                match=match,
                count=self.count,
                _type="stream",
            )
            taken += 1
            self.cursor = cursor
            for raw in names:
                name = _text(raw)
                if self.keys.producer_of(name) is not None:
                    self.found.add(name)
            if self.cursor == 0:
                return True
        return False

    def restart(self) -> None:
        self.cursor = 0
        self.found = set()
