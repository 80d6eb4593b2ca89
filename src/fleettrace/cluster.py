"""Redis Cluster: the client for it, the node that serves a namespace, and writes that
wait for replicas.

Every key of a namespace carries the hash tag ``{namespace}`` (:mod:`fleettrace.keys`),
so a namespace (each shard of a sharded one, :mod:`fleettrace.shards`) lives in one
hash slot, served by one master at a time. Three things need that master by name
rather than through the cluster client's routing:

- SCAN walks one node's keyspace, so the worker's discovery and the plan walks scan
  the master of the namespace's slot (:func:`slot_scan`);
- ``WAIT`` counts the replicas that acknowledged the writes of *its own connection*, so
  a write and its ``WAIT`` go together over one connection to that master
  (:class:`ReplicatedWrites`);
- the batch function library is loaded on every master (:mod:`fleettrace.batch_script`).

Everything else goes through redis-py's ``RedisCluster``, which follows MOVED and ASK
and learns the new layout after a failover. ``FLEETTRACE_REDIS_CLUSTER=true`` (or
``--redis-cluster``) selects it for the emitter, the worker, the readers and the CLI,
from the same URL (one seed node). docs/scaling.md says what each side does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, cast

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import AskError, MovedError, RedisClusterException

from fleettrace.cluster_settings import ReplicaWait

log = logging.getLogger(__name__)

#: How long auto trusts what it learnt of the master's replicas: a replica that comes
#: back (a failed master rejoining as the new master's replica) is waited for again
#: within this time.
REPLICAS_RECHECK_S: Final = 10.0


class LazyCluster:
    """A ``RedisCluster`` made at its first command, as a ``redis.Redis`` is lazy.

    redis-py's cluster client asks its seed node for the layout as soon as it is made
    and raises if it cannot: an emitter made while Redis is away must not raise into
    agent code, and a CLI command must say so in one line. A failure to reach the seed
    becomes a ``redis.ConnectionError`` at the first command, which every caller
    already handles (the emitter retries, readers translate it).
    """

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._url = url
        self._options = options
        self._client: RedisCluster | None = None
        self._retry: Any = None
        # Readers share one client across threads (the dashboard): one is built.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LazyCluster {'connected' if self._client is not None else 'not connected'}>"

    def built(self) -> RedisCluster:
        if self._client is not None:
            return self._client
        with self._lock:
            if self._client is None:
                try:
                    client = RedisCluster.from_url(self._url, **self._options)
                except RedisClusterException as error:
                    raise redis.ConnectionError(f"Redis Cluster not reachable: {error}") from None
                if self._retry is not None:
                    client.set_retry(self._retry)
                self._client = client
            return self._client

    def set_retry(self, retry: Any) -> None:
        self._retry = retry
        if self._client is not None:
            self._client.set_retry(retry)

    def register_script(self, script: str) -> Script:
        """A script bound to this client, registered without connecting."""
        # Script only keeps the client and calls its commands, which this one forwards.
        return Script(cast("RedisCluster", self), script)

    def get_encoder(self) -> Any:
        """The encoder a ``Script`` needs when registered, without connecting."""
        # A client that never connects gives the default one (utf-8, bytes replies).
        return redis.Redis().get_encoder()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.built(), name)


def connect_cluster(url: str, options: dict[str, Any]) -> redis.Redis:
    """The cluster client for a seed node's URL, typed as the ``redis.Redis`` every
    caller takes: it answers the same data commands (each namespace's keys in one slot
    make its multi-key commands, scripts and transactions valid); what differs is done
    here (:func:`slot_scan`, :class:`ReplicatedWrites`, the library's loading)."""
    options = {k: v for k, v in options.items() if k != "health_check_interval"}
    return cast("redis.Redis", LazyCluster(url, options))


class SlotPinned:
    """A client that sends everything to the master serving one slot, found again at
    every use, for code that pipelines script calls (the worker's aggregates): redis-py
    refuses scripts in a cluster pipeline, and a namespace's keys are all on that
    master. After an error, :func:`refresh_topology` lets it find the new master."""

    def __init__(self, cluster: Any, key: str) -> None:
        self.cluster = cluster
        self.key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(slot_client(self.cluster, self.key), name)


def pinned(client: redis.Redis, key: str) -> redis.Redis:
    """``client`` itself for a single Redis; on a cluster, a client of the master that
    serves ``key``'s slot that follows that slot through failovers (:class:`SlotPinned`)."""
    if isinstance(client, LazyCluster | RedisCluster):
        return cast("redis.Redis", SlotPinned(client, key))
    return client


def as_cluster(client: Any) -> Any:
    """The cluster client behind ``client`` (a ``RedisCluster``, typed loosely as
    redis-py's cluster methods are untyped); None for a single Redis."""
    if isinstance(client, SlotPinned):
        return as_cluster(client.cluster)
    if isinstance(client, LazyCluster):
        return client.built()
    if isinstance(client, RedisCluster):
        return client
    return None


def slot_client(client: redis.Redis, key: str) -> redis.Redis:
    """A client of the master that serves ``key``'s slot (``client`` itself when it
    is a single Redis): what a command that must reach that node goes through."""
    cluster = as_cluster(client)
    if cluster is None:
        return client
    node: redis.Redis = cluster.get_redis_connection(cluster.get_node_from_key(key))
    return node


def slot_scan(
    client: redis.Redis,
    key: str,
    cursor: int,
    *,
    match: str,
    count: int | None = None,
    _type: str | None = None,
) -> tuple[int, list[Any]]:
    """One SCAN step over the master that serves ``key``'s slot (a namespace's keys
    all live there); a single Redis is scanned as it is. After a failover the walk
    must start again (the cursor is the old master's): callers restart on a node
    change (:func:`slot_node_name`)."""
    cluster = as_cluster(client)
    if cluster is None:
        reply: Any = client.scan(cursor, match=match, count=count, _type=_type)
        return int(reply[0]), list(reply[1])
    node = cluster.get_node_from_key(key)
    cursors, found = cluster.scan(cursor, match=match, count=count, _type=_type, target_nodes=node)
    return int(next(iter(cursors.values()))), list(found)


def slot_node_name(client: redis.Redis, key: str) -> str | None:
    """``host:port`` of the master serving ``key``'s slot; None for a single Redis."""
    cluster = as_cluster(client)
    return None if cluster is None else str(cluster.get_node_from_key(key).name)


def refresh_topology(client: redis.Redis) -> None:
    """Ask the cluster for its layout again (after MOVED, ASK or a lost node met on a
    connection of one node's own); nothing for a single Redis."""
    try:
        cluster = as_cluster(client)
        if cluster is not None:
            cluster.nodes_manager.initialize()
    except (RedisClusterException, redis.RedisError) as error:
        log.debug("cluster layout not refreshed: %s", error)


class ReplicasBehind(redis.RedisError):
    """Fewer replicas acknowledged a write than asked for within the timeout: it is
    applied on the master and may be lost if the master fails now."""


class ReplicatedWrites:
    """Writes to a namespace that wait for replicas (``WAIT n timeout``) when asked.

    With nothing to wait for, the write goes through ``client`` as before (the
    cluster client follows redirections). Otherwise it goes, followed by its ``WAIT``,
    as one pipeline over one connection of the master that serves the namespace's
    slot, since ``WAIT`` counts only its own connection's writes. A redirection or a
    lost connection there makes the client learn the layout again and is raised: the
    caller retries (the emitter re-sends the same batch, which is applied once).
    """

    def __init__(self, client: redis.Redis, key: str, wait: ReplicaWait) -> None:
        self.client = client
        self.key = key
        self.wait = wait
        #: (master, replicas connected to it, when learnt), when auto needs it.
        self._known: tuple[str, int, float] | None = None
        self._warned_at = -REPLICAS_RECHECK_S
        #: Writes the replicas did not confirm in time (logged, not raised).
        self.unconfirmed = 0

    def wanted(self) -> int:
        """Replicas the next write waits for."""
        if self.wait.replicas is not None:
            return self.wait.replicas
        name = slot_node_name(self.client, self.key)
        if name is None:
            return 0  # auto on a single Redis: as before, no wait
        now = time.monotonic()
        known = self._known
        if known is None or known[0] != name or now - known[2] > REPLICAS_RECHECK_S:
            info: Any = slot_client(self.client, self.key).info("replication")
            known = self._known = (name, int(info.get("connected_slaves", 0)), now)
        return min(known[1], 1)

    def write(
        self,
        queue: Callable[[Any], object],
        *,
        transaction: bool = False,
        strict: bool = True,
    ) -> list[Any]:
        """Run the commands ``queue`` adds to the pipeline (or, with nothing to wait
        for and no transaction, that it runs on the client), then wait for replicas.
        Raises the first error; :class:`ReplicasBehind` when too few replicas
        acknowledged and ``strict`` (else it is logged). A lost connection (to the
        master, or met while asking it for its replicas) makes the client learn the
        layout again before it is raised, so the caller's retry finds the new master."""
        try:
            return self._write(queue, transaction=transaction, strict=strict)
        except (redis.ConnectionError, redis.TimeoutError):
            self._topology_changed()
            raise

    def _write(
        self, queue: Callable[[Any], object], *, transaction: bool, strict: bool
    ) -> list[Any]:
        wanted = self.wanted()
        if not wanted:
            if not transaction:
                return [queue(self.client)]
            atomic = self.client.pipeline(transaction=True)
            queue(atomic)
            return list(atomic.execute())
        node = slot_client(self.client, self.key)
        pipe: Any = node.pipeline(transaction=False)
        if transaction:
            pipe.execute_command("MULTI")
        queue(pipe)
        if transaction:
            pipe.execute_command("EXEC")
        pipe.wait(wanted, self.wait.timeout_ms)
        replies = pipe.execute(raise_on_error=False)
        errors = [r for r in _flat(replies) if isinstance(r, Exception)]
        if errors:
            if any(isinstance(e, MovedError | AskError) for e in errors):
                self._topology_changed()
            raise errors[0]
        acked = int(replies[-1])
        if acked < wanted:
            self._short(wanted, acked, strict=strict)
        return list(replies[:-1])

    def _topology_changed(self) -> None:
        self._known = None
        refresh_topology(self.client)

    def _short(self, wanted: int, acked: int, *, strict: bool) -> None:
        self._known = None
        if self.wait.replicas is None and self.wanted() == 0:
            return  # auto, and the master has no replica left to wait for
        message = (
            f"{acked} of {wanted} replicas acknowledged the write within {self.wait.timeout_ms} ms"
        )
        if strict:
            raise ReplicasBehind(message)
        self.unconfirmed += 1
        now = time.monotonic()
        if now - self._warned_at >= REPLICAS_RECHECK_S:  # not at every batch
            self._warned_at = now
            log.warning(
                "%s; it stands on the master alone until they catch up (%d such writes)",
                message,
                self.unconfirmed,
            )


def _flat(replies: list[Any]) -> list[Any]:
    """The replies with an EXEC's list of replies opened."""
    flat: list[Any] = []
    for reply in replies:
        if isinstance(reply, list):
            flat.extend(reply)
        else:
            flat.append(reply)
    return flat
