"""Finding the shards of a namespace: a SCAN walk over every master (docs/scaling.md).

Shard 0 is the namespace's own hash tag ``{ns}``; a shard ``s`` > 0 exists once a
producer stream ``{ns:s}:p:<producer>:traces`` (or ``:metrics``) does. Those keys
hash to slots anywhere in a cluster, so the walk covers every master (a single Redis
is one), looking for ``SCAN MATCH {ns:*}:p:* TYPE stream``, whatever the worker's
or the agents' ``FLEETTRACE_SHARDS``: a shard no emitter writes to any more is still
found, and drained, while its streams exist. The shards found are added to
``{ns}:shards`` (``Keys.shard_registry``), which only the worker writes and readers
sum over.

Like :class:`~fleettrace_worker.stream.discovery.StreamWalk` the walk is taken a few
steps at a time (``DISCOVER_STEPS`` per call), so its cost stays bounded whatever the
size of the database; a whole walk happens at start.
"""

from __future__ import annotations

from typing import Any

import redis

from fleettrace.cluster import as_cluster
from fleettrace.keys import MAX_SHARDS, PRODUCER_KEY_PART, Keys
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.keys import DISCOVER_SCAN_COUNT, DISCOVER_STEPS


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def shard_of(keys: Keys, name: str) -> int | None:
    """The shard (> 0) whose producer stream ``name`` is; None for anything else."""
    head = "{" + keys.namespace + ":"
    if not name.startswith(head):
        return None
    number, sep, _ = name[len(head) :].partition("}")
    if not sep or not number.isdigit() or number != str(int(number)):
        return None
    shard = int(number)
    if not 0 < shard < MAX_SHARDS:
        return None
    return shard if keys.for_shard(shard).producer_of(name) is not None else None


class ShardWalk:
    """One SCAN walk over every master, taken a few steps at a time."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, count: int = DISCOVER_SCAN_COUNT
    ) -> None:
        self.client = client
        self.keys = keys
        self.count = count
        #: Every shard found so far, by this walk and the ones before it.
        self.found: set[int] = {0}
        self._nodes: list[Any] = []
        self._cursor = 0

    @property
    def match(self) -> str:
        return "{" + self.keys.namespace + ":*}:" + PRODUCER_KEY_PART + ":*"

    def advance(self, steps: int | None = DISCOVER_STEPS) -> bool:
        """Take up to ``steps`` SCAN steps (None: to the end of the walk); True when a
        walk is complete (the next call starts another). New shards are added to the
        registry as they are met."""
        try:
            return self._advance(steps)
        except BaseException:
            self._nodes = []  # a cursor means nothing to another node: start again
            raise

    def _advance(self, steps: int | None) -> bool:
        with translate_redis_errors("looking for shards"):
            taken = 0
            while steps is None or taken < steps:
                if not self._nodes:
                    self._nodes = self._masters()
                    self._cursor = 0
                cursor, names = self._scan(self._nodes[0])
                taken += 1
                self._cursor = cursor
                fresh = set()
                for raw in names:
                    shard = shard_of(self.keys, _text(raw))
                    if shard is not None and shard not in self.found:
                        fresh.add(shard)
                if fresh:
                    self.client.sadd(self.keys.shard_registry, *sorted(fresh))
                    self.found |= fresh
                if cursor == 0:
                    self._nodes.pop(0)
                    if not self._nodes:
                        return True
        return False

    def _masters(self) -> list[Any]:
        cluster = as_cluster(self.client)
        if cluster is None:
            return [None]
        return list(cluster.get_primaries())

    def _scan(self, node: Any) -> tuple[int, list[Any]]:
        if node is None:
            reply: Any = self.client.scan(
                self._cursor, match=self.match, count=self.count, _type="stream"
            )
            return int(reply[0]), list(reply[1])
        cluster = as_cluster(self.client)
        cursors, found = cluster.scan(
            self._cursor, match=self.match, count=self.count, _type="stream", target_nodes=node
        )
        return int(next(iter(cursors.values()))), list(found)


def discover_shards(client: redis.Redis, keys: Keys) -> list[int]:
    """Every shard of the namespace (0 and those with a producer stream), ascending,
    after one whole walk; the ones found are added to the registry."""
    walk = ShardWalk(client, keys)
    walk.advance(steps=None)
    return sorted(walk.found)
