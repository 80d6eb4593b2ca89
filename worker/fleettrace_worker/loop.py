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
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from fleettrace.errors import ForwardingDeferred, PermanentError, TransientError
from fleettrace.keys import FIELD_DATA, MAX_ENTRY_BYTES
from fleettrace_worker.backoff import backoff_delay_s
from fleettrace_worker.consumer import Consumer, Entry
from fleettrace_worker.deadletter import DeadLetter

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the batch latency histogram the worker reports.
BATCH_LATENCY_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Seconds between checks that the delivering thread is still there.
_HANDOVER_WAIT_S: Final = 0.5

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How a group loop reads and retries."""

    batch_records: int = 2_000
    block_ms: int = 1_000
    max_deliveries: int = 5
    claim_interval_s: float = 1.0
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    #: Give up delivering a batch after this long and dead-letter it (None: never).
    give_up_after_s: float | None = None
    #: Stop when the streams hold nothing new for this group (tests, the demo).
    burst: bool = False
    #: Prepare the next batch while the previous one is delivered (see _run_pipelined).
    pipeline: bool = False
    #: Dead-letter an entry whose data field is larger than this, without decoding it.
    max_entry_bytes: int = MAX_ENTRY_BYTES


@dataclass
class LoopStats:
    """A group loop's figures, read by the health key and /metrics from other threads."""

    group: str
    records: int = 0
    entries: int = 0
    batches: int = 0
    dead_letters: int = 0
    retries: int = 0
    ready: bool = False
    last_error: str | None = None
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(BATCH_LATENCY_BUCKETS_S))
    latency_count: int = 0
    latency_sum_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe_batch(self, entries: int, records: int, dead: int, latency_s: float) -> None:
        with self.lock:
            self.entries += entries
            self.records += records
            self.dead_letters += dead
            self.batches += 1
            self.latency_count += 1
            self.latency_sum_s += latency_s
            for index, bound in enumerate(BATCH_LATENCY_BUCKETS_S):
                if latency_s <= bound:
                    self.latency_buckets[index] += 1
                    break

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {
                "group": self.group,
                "records": self.records,
                "entries": self.entries,
                "batches": self.batches,
                "dead_letters": self.dead_letters,
                "retries": self.retries,
                "ready": self.ready,
                "last_error": self.last_error,
            }


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


class Stopped(Exception):
    """The loop was told to stop while it waited to retry."""


class GroupLoop(ABC, Generic[P]):
    """One consumer group's loop; run it in a thread of its own, with its own client."""

    def __init__(self, consumer: Consumer, settings: LoopSettings) -> None:
        self.consumer = consumer
        self.settings = settings
        self.stats = LoopStats(consumer.group)
        self._read_count = 1
        self._last_claim = 0.0
        self._recovering = True

    @property
    def group(self) -> str:
        return self.consumer.group

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
        try:
            self._retry(self.setup, stop, ())
            if self.settings.pipeline:
                self._run_pipelined(stop)
                return
            while not stop.is_set():
                entries = self._retry(self.take, stop, ())
                if not entries:
                    if self.settings.burst:
                        return
                    continue
                self.handle(entries, stop)
        except Stopped:
            log.info("group %s stopped with a batch unfinished; it stays pending", self.group)

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
                entries = self._retry(self.take, stop, ())
                if not entries:
                    if self.settings.burst:
                        break
                    continue
                batch = self._start(entries)
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
        self._finish(self._start(entries), stop)

    def take(self) -> list[Entry]:
        """This consumer's own unfinished entries after a restart first, then entries
        others left behind (once per ``claim_interval_s``), else new ones."""
        if self._recovering:
            own = self.consumer.recover(count=self._read_count)
            if own:
                return own
            self._recovering = False
        now = time.monotonic()
        if now - self._last_claim >= self.settings.claim_interval_s:
            self._last_claim = now
            claimed = self.consumer.claim(count=self._read_count)
            if claimed:
                return claimed
        block_ms = None if self.settings.burst else self.settings.block_ms
        return self.consumer.read(count=self._read_count, block_ms=block_ms)

    def _start(self, entries: list[Entry]) -> _Batch[P]:
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
        return _Batch(entries, live, dead, prepared, started)

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
        self.stats.observe_batch(
            len(entries), records, len(dead), time.perf_counter() - batch.started
        )
        self._adapt_read_count(len(entries), records + len(dead))

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
        started = time.monotonic()
        give_up = self.settings.give_up_after_s

        def attempt() -> list[DeadLetter]:
            try:
                return self.deliver(prepared.payload)
            except TransientError as error:
                if give_up is not None and time.monotonic() - started >= give_up:
                    raise _GaveUp(str(error)) from None
                raise

        try:
            return self._retry(attempt, stop, entries)
        except _GaveUp as error:
            reason = f"gave up after {give_up:g} s: {error}"
            return [
                DeadLetter.for_entry(e.stream, e.entry_id, e.fields, self.consumer.name, reason)
                for e in entries
            ]

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
        with contextlib.suppress(TransientError):
            self.consumer.touch(in_hand)

    def _adapt_read_count(self, entries: int, records: int) -> None:
        """Read as many entries as hold about ``batch_records`` records, whatever batch
        size the producers chose."""
        per_entry = max(1.0, records / entries)
        self._read_count = max(
            1, min(self.settings.batch_records, round(self.settings.batch_records / per_entry))
        )


def _too_large(entry: Entry, max_entry_bytes: int) -> bool:
    return len(entry.fields.get(FIELD_DATA, b"")) > max_entry_bytes


class _GaveUp(PermanentError):
    pass
