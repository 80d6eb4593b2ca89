"""The loop every consumer group runs: take entries, prepare, deliver, acknowledge.

A group (``persist`` to PostgreSQL, ``langsmith`` to LangSmith) subclasses
:class:`GroupLoop` and writes two steps:

* ``prepare(entries)``: pure work on the entries (decode, validate), returning
  what to deliver and the dead letters of what cannot be delivered;
* ``deliver(prepared)``: the call to the outside world. A ``TransientError`` is
  retried with capped exponential backoff (honouring a server's Retry-After), while
  the entries stay pending and in hand; a ``PermanentError`` for the whole batch is
  narrowed down by delivering entry by entry, and an entry that still fails alone
  becomes a dead letter.

The loop then acknowledges the entries together with their dead letters, and only
then: an entry is never acknowledged before its delivery succeeded. An entry
delivered more than ``max_deliveries`` times is dead-lettered without another try,
so one poisonous entry cannot crash every worker of the group in turn.

While entries are in hand (read, not yet acknowledged) a keeper thread refreshes
their idle time every ``keep_interval_s`` (a third of ``claim_idle_ms``), so no other
consumer takes over a batch that is slow rather than abandoned; the loop counts
the seconds since it last finished a batch and reports itself not ready when it
holds work for longer than ``progress_limit_s`` without finishing any.

An entry written in a newer stream format than this code reads is left pending:
neither delivered, nor dead-lettered, nor acknowledged, and no longer refreshed, so
an upgraded worker takes it over after ``claim_idle_ms``; the loop says "upgrade
needed" in its log (at most every ``UPGRADE_LOG_INTERVAL_S``) and its health.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from fleettrace.codec import READABLE_VERSIONS, newer_version
from fleettrace.errors import FleettraceError, PermanentError, TransientError
from fleettrace.keys import FIELD_DATA
from fleettrace_worker.errors import ForwardingDeferred
from fleettrace_worker.stream.backoff import backoff_delay_s
from fleettrace_worker.stream.consumer import Consumer, Entry
from fleettrace_worker.stream.deadletter import DEAD_LETTER_LOG, DeadLetter
from fleettrace_worker.stream.loopstate import (
    BATCH_LATENCY_BUCKETS_S,
    LoopSettings,
    LoopStats,
    ReadSizer,
    entry_records,
    slices,
)

__all__ = [
    "BATCH_LATENCY_BUCKETS_S",
    "GroupLoop",
    "LoopSettings",
    "LoopStats",
    "Prepared",
    "Stopped",
]

log = logging.getLogger(__name__)

#: Seconds between checks that the delivering thread is still there.
_HANDOVER_WAIT_S: Final = 0.5
#: Seconds between two "upgrade needed" warnings of one group.
UPGRADE_LOG_INTERVAL_S: Final = 600.0
#: Ids of entries left for a newer worker that a loop remembers (to tell, in burst
#: mode, a read that brought only those again from one that brought new work).
_DEFERRED_MEMORY: Final = 100_000

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Prepared(Generic[P]):
    """What ``prepare`` made of a batch: the payload to deliver, the number of records
    it holds, and the dead letters of what could not be prepared."""

    payload: P
    records: int
    dead_letters: list[DeadLetter]


@dataclass(frozen=True, slots=True)
class _Batch(Generic[P]):
    """A batch between reading and acknowledging."""

    entries: list[Entry]
    live: list[Entry]
    dead: list[DeadLetter]
    prepared: Prepared[P] | None
    started: float
    token: int


class Stopped(Exception):
    """The loop was told to stop while it waited to retry."""


class GroupLoop(ABC, Generic[P]):
    """One consumer group's loop; run it in a thread of its own, with its own client."""

    def __init__(self, consumer: Consumer, settings: LoopSettings) -> None:
        self.consumer = consumer
        self.settings = settings
        self.stats = LoopStats(consumer.label, progress_limit_s=settings.progress_limit_s)
        self.sizer = ReadSizer(settings, consumer.streams)
        self._last_claim = 0.0
        self._recovering = True
        self._in_hand: dict[int, tuple[list[Entry], int]] = {}
        self._next_token = 0
        self._deferred: set[tuple[str, str]] = set()
        self._upgrade_logged_at: float | None = None

    @property
    def group(self) -> str:
        """The group's name, with its shard past shard 0 (``Consumer.label``)."""
        return self.consumer.label

    @abstractmethod
    def prepare(self, entries: Sequence[Entry]) -> Prepared[P]:
        """Decode and validate; no I/O, no exceptions for bad input (dead letters)."""

    @abstractmethod
    def deliver(self, payload: P) -> list[DeadLetter]:
        """Send a prepared payload; returns dead letters of records the far side refused
        for good. Raises ``TransientError`` to be retried, ``PermanentError`` when the
        batch as a whole was refused."""

    def setup(self) -> None:
        """Work done once before reading (and again after an outage at start-up)."""
        self.consumer.ensure_groups()

    def run(self, stop: threading.Event) -> None:
        """Read and handle batches until ``stop`` is set (or, in burst mode, until there
        is nothing left). Entries in hand when ``stop`` is set are finished first."""
        done = threading.Event()
        keeper = threading.Thread(
            target=self._keep_in_hand, args=(done,), name=f"keep-{self.group}", daemon=True
        )
        keeper.start()
        try:
            self._retry(self.setup, stop, ())
            if self.settings.pipeline:
                self._run_pipelined(stop)
                return
            while not stop.is_set():
                parts = self._next(stop)
                if parts is None:
                    if self.settings.burst:
                        return
                    continue
                for index, (entries, token) in enumerate(parts):
                    if index and stop.is_set():
                        break  # the rest of the read stays pending, recovered on restart
                    self._finish(self._start(entries, token), stop)
        except Stopped:
            log.info("group %s stopped with a batch unfinished; it stays pending", self.group)
        finally:
            done.set()
            keeper.join()

    def _run_pipelined(self, stop: threading.Event) -> None:
        """Read and prepare the next batch while the previous one is being delivered.

        Preparing is Python work and delivering mostly waits on a server, so the two
        overlap well. At most one prepared batch waits in the queue: memory stays
        bounded at about three batches.
        """
        batches: queue.Queue[_Batch[P] | None] = queue.Queue(maxsize=1)
        failure: list[BaseException] = []

        def deliver_all() -> None:
            try:
                while (batch := batches.get()) is not None:
                    self._finish(batch, stop)
            except BaseException as error:  # noqa: BLE001 (raised again by the reader)
                failure.append(error)

        deliverer = threading.Thread(target=deliver_all, name=f"deliver-{self.group}", daemon=True)
        deliverer.start()
        try:
            while not stop.is_set() and deliverer.is_alive():
                parts = self._next(stop)
                if parts is None:
                    if self.settings.burst:
                        break
                    continue
                for index, (entries, token) in enumerate(parts):
                    if index and stop.is_set():
                        break  # the rest of the read stays pending, recovered on restart
                    batch = self._start(entries, token)
                    while deliverer.is_alive():
                        try:
                            batches.put(batch, timeout=_HANDOVER_WAIT_S)
                            break
                        except queue.Full:
                            continue
        finally:
            while deliverer.is_alive():
                try:
                    batches.put(None, timeout=_HANDOVER_WAIT_S)
                    break
                except queue.Full:
                    continue
            deliverer.join()
        if failure:
            raise failure[0]

    def handle(self, entries: list[Entry], stop: threading.Event) -> None:
        """Prepare, deliver and acknowledge one batch."""
        self._finish(self._start(entries, self._hold(entries)), stop)

    def _next(self, stop: threading.Event) -> list[tuple[list[Entry], int]] | None:
        """The next read cut into batches of at most ``batch_records`` records, each
        held (kept from other consumers) until acknowledged; None when the read brought
        nothing new. Entries of a newer stream format are left out and left pending."""
        entries = self._retry(self.take, stop, ())
        sizes = [entry_records(e.fields) for e in entries]
        self.sizer.observe([(e.stream, size) for e, size in zip(entries, sizes, strict=True)])
        current, current_sizes, seen_before = [], [], 0
        for entry, size in zip(entries, sizes, strict=True):
            version = newer_version(entry.fields)
            if version is None:
                current.append(entry)
                current_sizes.append(size)
                continue
            key = (entry.stream, entry.entry_id)
            seen_before += key in self._deferred
            if len(self._deferred) >= _DEFERRED_MEMORY:
                self._deferred.clear()
            self._deferred.add(key)
            self._upgrade_needed(version)
        if not current:
            self.stats.idle()
            return None if seen_before == len(entries) else []
        return [
            (
                current[start:stop_at],
                self._hold(current[start:stop_at], current_sizes[start:stop_at]),
            )
            for start, stop_at in slices(current_sizes, self.settings.batch_records)
        ]

    def _upgrade_needed(self, version: int) -> None:
        readable = ", ".join(str(v) for v in sorted(READABLE_VERSIONS))
        message = (
            f"upgrade needed: entries of stream format version {version} found; this worker "
            f"reads versions {readable}, and leaves them pending for an upgraded worker"
        )
        with self.stats.lock:
            self.stats.upgrade_needed = message
        now = time.monotonic()
        if (
            self._upgrade_logged_at is None
            or now - self._upgrade_logged_at >= UPGRADE_LOG_INTERVAL_S
        ):
            self._upgrade_logged_at = now
            log.warning("group %s: %s", self.group, message)

    def _hold(self, entries: list[Entry], sizes: Sequence[int] | None = None) -> int:
        """Count ``entries`` in hand (the keeper refreshes them) until ``_release``."""
        records = sum(sizes) if sizes is not None else sum(entry_records(e.fields) for e in entries)
        with self.stats.lock:
            self._next_token += 1
            token = self._next_token
            self._in_hand[token] = (entries, records)
            self.stats.in_hand_entries += len(entries)
            self.stats.in_hand_records += records
        return token

    def _release(self, token: int) -> None:
        with self.stats.lock:
            entries, records = self._in_hand.pop(token, ([], 0))
            self.stats.in_hand_entries -= len(entries)
            self.stats.in_hand_records -= records

    def _keep_in_hand(self, done: threading.Event) -> None:
        """Refresh the idle time of every entry in hand until ``done``."""
        interval_s = self.settings.keep_interval_s or self.consumer.claim_idle_ms / 3000
        while not done.wait(interval_s):
            with self.stats.lock:
                held = [entry for entries, _ in self._in_hand.values() for entry in entries]
            self._keep(held)

    def take(self) -> list[Entry]:
        """This consumer's own unfinished entries after a restart first, then entries
        others left behind (once per ``claim_interval_s``), else new ones."""
        if self._recovering:
            own = self.consumer.recover(count=self.sizer.count)
            if own:
                return own
            self._recovering = False
        now = time.monotonic()
        if now - self._last_claim >= self.settings.claim_interval_s:
            self._last_claim = now
            claimed = self.consumer.claim(count=self.sizer.count)
            if claimed:
                return claimed
        block_ms = None if self.settings.burst else self.settings.block_ms
        return self.consumer.read(count=self.sizer.count, block_ms=block_ms)

    def _start(self, entries: list[Entry], token: int) -> _Batch[P]:
        started = time.perf_counter()
        dead: list[DeadLetter] = []
        live: list[Entry] = []
        for entry in entries:
            reason = self._refusal(entry)
            if reason is None:
                live.append(entry)
                continue
            fields = entry.fields
            if _too_large(entry, self.settings.max_entry_bytes):
                # Not copied into the dead-letter stream, which is never trimmed: a writer
                # must not be able to grow it by whatever size it chooses.
                fields = {name: value for name, value in fields.items() if name != FIELD_DATA}
            dead.append(
                DeadLetter.for_entry(
                    entry.stream, entry.entry_id, fields, self.consumer.name, reason
                )
            )
        prepared = self.prepare(live) if live else None
        return _Batch(entries, live, dead, prepared, started, token)

    def _refusal(self, entry: Entry) -> str | None:
        """Why ``entry`` is dead-lettered before ``prepare`` sees it, else None. Size
        first: the dead letter of an entry too large never keeps its data.

        The size is checked before anything decodes the entry: decoding a 20 MB entry
        of valid records took a worker from 76 to 237 MB, so one oversized entry (a bug
        or a hostile writer) could take the memory of every worker of the group.
        """
        if _too_large(entry, self.settings.max_entry_bytes):
            return (
                f"entry too large: field 'd' holds {len(entry.fields[FIELD_DATA])} bytes, "
                f"more than max_entry_bytes={self.settings.max_entry_bytes}; "
                "not decoded, its data not kept"
            )
        limit = self.settings.max_deliveries
        if entry.deliveries > limit:
            return f"delivered {entry.deliveries} times, more than max_deliveries={limit}"
        return None

    def _finish(self, batch: _Batch[P], stop: threading.Event) -> None:
        records = 0
        dead = batch.dead
        if batch.prepared is not None:
            records, more_dead = self._deliver_batch(batch.live, stop, batch.prepared)
            dead = dead + more_dead
        entries = batch.entries
        self._retry(lambda: self.consumer.acknowledge(entries, dead), stop, entries)
        DEAD_LETTER_LOG.note(self.group, dead)
        self._release(batch.token)
        self.stats.observe_batch(
            len(entries), records, len(dead), time.perf_counter() - batch.started
        )

    def _deliver_batch(
        self, entries: list[Entry], stop: threading.Event, prepared: Prepared[P] | None = None
    ) -> tuple[int, list[DeadLetter]]:
        if prepared is None:
            prepared = self.prepare(entries)
        try:
            refused = self._deliver_with_retry(prepared, entries, stop)
        except PermanentError as error:
            if len(entries) == 1:
                entry = entries[0]
                reason = f"refused: {error}"
                return 0, [
                    DeadLetter.for_entry(
                        entry.stream, entry.entry_id, entry.fields, self.consumer.name, reason
                    )
                ]
            records = 0
            dead: list[DeadLetter] = []
            for entry in entries:
                done, entry_dead = self._deliver_batch([entry], stop)
                records += done
                dead.extend(entry_dead)
            return records, dead
        return prepared.records, prepared.dead_letters + refused

    def _deliver_with_retry(
        self, prepared: Prepared[P], entries: list[Entry], stop: threading.Event
    ) -> list[DeadLetter]:
        return self._retry(lambda: self.deliver(prepared.payload), stop, entries)

    def _retry(self, call: Callable[[], R], stop: threading.Event, in_hand: Sequence[Entry]) -> R:
        """``call()`` until it succeeds; between attempts the loop reports not ready and
        waits with capped exponential backoff and jitter. Raises :class:`Stopped` when
        told to stop while waiting."""
        attempt = 0
        while True:
            try:
                result = call()
            except TransientError as error:
                self._not_ready(error)
                retry_after_s = (
                    error.retry_after_s if isinstance(error, ForwardingDeferred) else None
                )
                wait_s = backoff_delay_s(
                    attempt,
                    initial_s=self.settings.retry_initial_s,
                    max_s=self.settings.retry_max_s,
                    retry_after_s=retry_after_s,
                )
                if stop.wait(wait_s):
                    raise Stopped from None
                attempt += 1
                self._keep(in_hand)
                continue
            self.stats.ready = True
            return result

    def _not_ready(self, error: Exception) -> None:
        with self.stats.lock:
            if self.stats.last_error != str(error):
                log.warning("group %s: %s (retrying)", self.group, error)
            self.stats.ready = False
            self.stats.last_error = str(error)
            self.stats.retries += 1

    def _keep(self, in_hand: Sequence[Entry]) -> None:
        if not in_hand:
            return
        # When Redis is away too, the entries stay pending all the same.
        try:
            self.consumer.touch(in_hand)
        except FleettraceError as error:
            log.debug("group %s: entries in hand not refreshed: %s", self.group, error)


def _too_large(entry: Entry, max_entry_bytes: int) -> bool:
    return len(entry.fields.get(FIELD_DATA, b"")) > max_entry_bytes
