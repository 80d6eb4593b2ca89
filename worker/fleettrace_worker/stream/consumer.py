"""Consumer-group machinery every group shares: join, read, take over, acknowledge.

Nothing here knows what a group does with its entries (PostgreSQL, LangSmith): a
group loop reads entries of every producer's streams (``{ns}:p:<producer>:traces``
and ``:metrics``, found by :mod:`fleettrace_worker.stream.discovery`: a whole walk at start
and on every read in burst mode, then a few steps every ``discover_interval_s``),
handles them, and
acknowledges them together with the dead letters it made, in one MULTI/EXEC. All
keys of a namespace (of one shard of it, docs/scaling.md: a consumer works in one
shard) share one hash slot, so that transaction is valid on a cluster too, and a
crash can never leave an entry acknowledged without its dead letter, or
dead-lettered without being acknowledged.

Entries left pending by a consumer that died are taken over with XAUTOCLAIM once
they have been idle for ``claim_idle_ms``; each entry carries how often it has been
delivered, so that a group can dead-letter one that keeps failing. A stream found
for the first time gets the group (from its first entry) before it is read, so a
new producer is picked up without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis

from fleettrace.cluster import ReplicatedWrites
from fleettrace.cluster_settings import ReplicaWait
from fleettrace.keys import Keys
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.keys import DISCOVER_INTERVAL_S
from fleettrace_worker.stream.deadletter import DeadLetter
from fleettrace_worker.stream.discovery import (
    StreamWalk,
    discover_streams,
    legacy_streams,
    register_producers,
)

#: The id a group starts from when it is created: the whole stream, so records sent
#: before the first worker ever started are stored too.
GROUP_START_ID: Final = "0"
_CURSOR_START: Final = "0-0"
#: How many of its own pending entries a consumer checks for deleted ones at a time.
_FORGET_SCAN: Final = 1_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry in a consumer's hands."""

    stream: str
    entry_id: str
    fields: Mapping[bytes, bytes]
    deliveries: int


@dataclass(frozen=True, slots=True)
class GroupState:
    """Where one group stands on one stream (XINFO GROUPS plus the oldest pending id)."""

    stream: str
    group: str
    pending: int
    lag: int | None
    last_delivered_id: str
    oldest_pending_id: str | None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Consumer:
    """One named consumer of one group over the streams of a namespace."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        group: str,
        name: str,
        *,
        claim_idle_ms: int = 30_000,
        discover_interval_s: float = DISCOVER_INTERVAL_S,
        wait: ReplicaWait | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.name = name
        self.claim_idle_ms = claim_idle_ms
        self.discover_interval_s = discover_interval_s
        #: The streams this consumer reads, each with the group on it.
        self.streams: list[str] = []
        self._discovered_at: float | None = None
        self._walk = StreamWalk(client, keys)
        self._claim_cursor: dict[str, str] = {}
        self._recover_cursor: dict[str, str] = {}
        # The acknowledging transaction waits for replicas when asked (by default on
        # a cluster whose master has one): see acknowledge().
        self._writes = ReplicatedWrites(client, keys.producers, wait or ReplicaWait())

    def __repr__(self) -> str:
        return (
            f"Consumer(group={self.group!r}, name={self.name!r}, namespace={self.keys.namespace!r})"
        )

    @property
    def label(self) -> str:
        """The group's name in logs, health and /metrics: ``persist`` for shard 0,
        ``persist:2`` for the loop of shard 2 (docs/scaling.md)."""
        return f"{self.group}:{self.keys.shard}" if self.keys.shard else self.group

    def ensure_groups(self) -> None:
        """Find the namespace's streams now and create the group where it is missing."""
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> list[str]:
        """Look for producer streams and create the group on each new one; returns the
        new ones. The first call and ``force`` walk the whole database; later calls
        take the next few steps of a walk (:class:`StreamWalk`) once per
        ``discover_interval_s``, so the cost stays bounded on a large database."""
        now = time.monotonic()
        known = set(self.streams)
        if force or self._discovered_at is None:
            found = discover_streams(self.client, self.keys)
            self._walk.restart()
            create = found if force else [s for s in found if s not in known]
        elif now - self._discovered_at < self.discover_interval_s:
            return []
        else:
            with translate_redis_errors("looking for producer streams"):
                complete = self._walk.advance()
                seen = self._walk.found
                fresh = sorted(s for s in seen if s not in known)
                if complete:
                    # A whole walk done: streams that went away leave the list.
                    found = legacy_streams(self.client, self.keys) + sorted(seen)
                    register_producers(self.client, self.keys, seen)
                    self._walk.restart()
                else:
                    found = self.streams + fresh
                    if fresh:
                        register_producers(self.client, self.keys, set(fresh))
            create = [s for s in found if s not in known]
        self._discovered_at = now
        with translate_redis_errors(f"creating consumer group {self.group!r}"):
            for stream in create:
                self._create_group(stream)
        self.streams = found
        return [s for s in found if s not in known]

    def _create_group(self, stream: str) -> None:
        try:
            self.client.xgroup_create(stream, self.group, id=GROUP_START_ID, mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read(self, *, count: int, block_ms: int | None) -> list[Entry]:
        """New entries (never delivered to any consumer of the group), up to ``count``
        per stream, waiting up to ``block_ms`` for some when there are none. In burst
        mode (``block_ms`` None) the streams are looked for before every read."""
        self.refresh(force=block_ms is None)
        if not self.streams:
            if block_ms:
                time.sleep(block_ms / 1000)  # nothing to block on yet
            return []
        with translate_redis_errors("reading the streams"):
            try:
                reply: Any = self.client.xreadgroup(
                    self.group,
                    self.name,
                    dict.fromkeys(self.streams, ">"),
                    count=count,
                    block=block_ms,
                )
            except redis.ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                # Someone deleted a stream or the group: join again, read next time.
                self.ensure_groups()
                return []
        return [
            Entry(_text(stream), _text(entry_id), fields, 1)
            for stream, rows in reply or ()
            for entry_id, fields in rows
        ]

    def recover(self, *, count: int) -> list[Entry]:
        """Entries this consumer name was given and never acknowledged (a previous run
        of the same worker that died), oldest first, so a restarted worker finishes them
        at once instead of after ``claim_idle_ms``. Empty when there are none left."""
        with translate_redis_errors("reading own pending entries"):
            # From a cursor: entries recovered earlier may still be in hand, unacknowledged.
            self.refresh()
            if not self.streams:
                return []
            cursors: Any = {s: self._recover_cursor.get(s, _CURSOR_START) for s in self.streams}
            reply: Any = self.client.xreadgroup(self.group, self.name, cursors, count=count)
            found: list[tuple[str, str, Mapping[bytes, bytes]]] = []
            gone: dict[str, list[str]] = {}
            for stream, rows in reply or ():
                for entry_id, fields in rows:
                    if entry_id is not None:
                        self._recover_cursor[_text(stream)] = _text(entry_id)
                    if not fields or entry_id is None:
                        # Deleted while pending (no fields; XADD never makes an entry
                        # without one): nothing to handle, nothing to keep.
                        if entry_id is not None:
                            gone.setdefault(_text(stream), []).append(_text(entry_id))
                        continue
                    found.append((_text(stream), _text(entry_id), fields))
            for stream, ids in gone.items():
                self.client.xack(stream, self.group, *ids)
            return self._with_deliveries(found)

    def claim(self, *, count: int) -> list[Entry]:
        """Take over entries that other consumers left pending longer than
        ``claim_idle_ms``, with their delivery counts (this delivery included)."""
        claimed: list[tuple[str, str, Mapping[bytes, bytes]]] = []
        self.refresh()
        streams = list(self.streams)
        if not streams:
            return []
        with translate_redis_errors("claiming pending entries"):
            # One round trip for every stream: there is a pair per producer.
            pipe = self.client.pipeline(transaction=False)
            for stream in streams:
                pipe.xautoclaim(
                    stream,
                    self.group,
                    self.name,
                    min_idle_time=self.claim_idle_ms,
                    start_id=self._claim_cursor.get(stream, _CURSOR_START),
                    count=count,
                )
            replies: list[Any] = pipe.execute(raise_on_error=False)
            for stream, reply in zip(streams, replies, strict=True):
                if isinstance(reply, redis.ResponseError):
                    if "NOGROUP" in str(reply) or "no such key" in str(reply).lower():
                        self._discovered_at = None  # gone or recreated: look again
                        continue
                    raise reply
                self._claim_cursor[stream] = _text(reply[0])
                rows = reply[1]
                if any(entry_id is None for entry_id, _ in rows):
                    self._forget_deleted(stream)
                claimed.extend(
                    (stream, _text(entry_id), fields)
                    for entry_id, fields in rows
                    if entry_id is not None
                )
            return self._with_deliveries(claimed)

    def _with_deliveries(self, taken: list[tuple[str, str, Mapping[bytes, bytes]]]) -> list[Entry]:
        """Entries with their delivery counts, read from the pending list (one round trip)."""
        if not taken:
            return []
        pipe = self.client.pipeline(transaction=False)
        for stream, entry_id, _ in taken:
            pipe.xpending_range(
                stream, self.group, min=entry_id, max=entry_id, count=1, consumername=self.name
            )
        details = pipe.execute()
        entries = []
        for (stream, entry_id, fields), detail in zip(taken, details, strict=True):
            deliveries = int(detail[0]["times_delivered"]) if detail else 1
            entries.append(Entry(stream, entry_id, fields, deliveries))
        return entries

    def _forget_deleted(self, stream: str) -> None:
        """Acknowledge this consumer's pending entries that no longer exist.

        Redis 7 drops entries deleted while pending from the pending list itself.
        Redis 6.2 (the embedded server) hands them over to XAUTOCLAIM as nil, without
        their ids, so they would stay pending for ever; they are found here by asking
        which of the ids this consumer holds are gone from the stream.
        """
        mine: Any = self.client.xpending_range(
            stream, self.group, min="-", max="+", count=_FORGET_SCAN, consumername=self.name
        )
        ids = [_text(item["message_id"]) for item in mine]
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(stream, min=entry_id, max=entry_id)
        found = pipe.execute()
        gone = [entry_id for entry_id, rows in zip(ids, found, strict=True) if not rows]
        if gone:
            self.client.xack(stream, self.group, *gone)

    def acknowledge(
        self, entries: Sequence[Entry], dead_letters: Sequence[DeadLetter] = ()
    ) -> None:
        """Acknowledge ``entries`` and add ``dead_letters`` in one transaction, then,
        when replicas are waited for, ``WAIT`` for them. Without it, a master lost
        before its replica got the transaction gives the entries back as pending (they
        are handled again: stored once, forwarded again) and its dead letters are made
        again; a replica that does not answer in time is logged, not retried, since the
        transaction stands on the master."""
        if not entries and not dead_letters:
            return
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        dlq = self.keys.dead_letters(self.group)

        def queue(pipe: Any) -> None:
            for letter in dead_letters:
                pipe.xadd(dlq, letter.to_fields())
            for stream, ids in by_stream.items():
                pipe.xack(stream, self.group, *ids)

        with translate_redis_errors("acknowledging entries"):
            self._writes.write(queue, transaction=True, strict=False)

    def touch(self, entries: Sequence[Entry]) -> None:
        """Reset the idle time of entries still in hand, so that no other consumer
        takes them over while this one waits for a database to come back. JUSTID
        leaves their delivery counts alone."""
        by_stream: dict[str, list[int | bytes | str | memoryview]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        with translate_redis_errors("refreshing pending entries"):
            for stream, ids in by_stream.items():
                self.client.xclaim(stream, self.group, self.name, 0, ids, justid=True)

    def states(self) -> list[GroupState]:
        """Where this group stands on each stream (empty for a stream without it)."""
        found = []
        for state in group_states(self.client, self.keys, self.streams):
            if state.group == self.group:
                found.append(state)
        return found


def group_states(
    client: redis.Redis, keys: Keys, streams: Sequence[str] | None = None
) -> list[GroupState]:
    """Every group on every stream of the namespace (``streams``, else those found
    by :func:`~fleettrace_worker.stream.discovery.discover_streams`), with its oldest
    pending entry."""
    states = []
    if streams is None:
        streams = discover_streams(client, keys)
    with translate_redis_errors("reading consumer groups"):
        for stream in streams:
            try:
                groups = client.xinfo_groups(stream)
            except redis.ResponseError as error:
                if "no such key" in str(error).lower():
                    continue
                raise
            for info in groups:
                name = _text(info["name"])
                pending = int(info["pending"])
                oldest = None
                if pending:
                    summary: Any = client.xpending(stream, name)
                    if summary["pending"]:
                        oldest = _text(summary["min"])
                lag = info.get("lag")
                states.append(
                    GroupState(
                        stream=stream,
                        group=name,
                        pending=pending,
                        lag=None if lag is None else int(lag),
                        last_delivered_id=_text(info["last-delivered-id"]),
                        oldest_pending_id=oldest,
                    )
                )
    return states
