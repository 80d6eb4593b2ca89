"""What a group loop is told (:class:`LoopSettings`), what it reports
(:class:`LoopStats`) and how many entries it asks for at a time (:class:`ReadSizer`).

Kept apart from ``loop.py`` so that the health snapshot, ``/readyz`` and
``/metrics`` read one object whose every field is written under one lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from fleettrace.keys import FIELD_COUNT, MAX_ENTRY_BYTES

#: Upper bounds (seconds) of the batch latency histogram the worker reports.
BATCH_LATENCY_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds a group may hold a batch without finishing one before it is reported stalled.
DEFAULT_PROGRESS_LIMIT_S: Final = 120.0
#: The loop's defaults, which the worker's settings (``context.WorkerSettings``) take
#: as theirs: one default per knob.
DEFAULT_BATCH_RECORDS: Final = 4_000
DEFAULT_BLOCK_MS: Final = 1_000
DEFAULT_MAX_DELIVERIES: Final = 5
DEFAULT_RETRY_MAX_S: Final = 5.0
#: How many batches a loop holds at most (one read and prepared, one waiting, one
#: being delivered): the records-in-hand limit is this many times ``batch_records``.
BATCHES_IN_HAND: Final = 3


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How a group loop reads and retries."""

    batch_records: int = DEFAULT_BATCH_RECORDS
    block_ms: int = DEFAULT_BLOCK_MS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    claim_interval_s: float = 1.0
    retry_initial_s: float = 0.1
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    #: Stop when the streams hold nothing new for this group (tests, the demo).
    burst: bool = False
    #: Prepare the next batch while the previous one is delivered (see _run_pipelined).
    pipeline: bool = False
    #: Dead-letter an entry whose data field is larger than this, without decoding it.
    max_entry_bytes: int = MAX_ENTRY_BYTES
    #: Report the group not ready once it has held work this long without finishing a batch.
    progress_limit_s: float = DEFAULT_PROGRESS_LIMIT_S
    #: Records read and not yet acknowledged, at most (None: BATCHES_IN_HAND batches).
    max_records_in_hand: int | None = None
    #: Seconds between refreshes of the idle time of entries in hand (None: a third
    #: of the consumer's ``claim_idle_ms``, so no other consumer takes them over).
    keep_interval_s: float | None = None

    @property
    def records_in_hand_limit(self) -> int:
        return self.max_records_in_hand or BATCHES_IN_HAND * self.batch_records


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
    #: Entries and records read and not yet acknowledged.
    in_hand_entries: int = 0
    in_hand_records: int = 0
    #: When the loop last finished a batch or found nothing to do (time.monotonic()).
    progress_at: float = field(default_factory=time.monotonic)
    progress_limit_s: float = DEFAULT_PROGRESS_LIMIT_S
    #: Set once entries of a newer stream format were seen: this worker must be upgraded.
    upgrade_needed: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe_batch(self, entries: int, records: int, dead: int, latency_s: float) -> None:
        with self.lock:
            self.entries += entries
            self.records += records
            self.dead_letters += dead
            self.batches += 1
            self.latency_count += 1
            self.latency_sum_s += latency_s
            self.progress_at = time.monotonic()
            for index, bound in enumerate(BATCH_LATENCY_BUCKETS_S):
                if latency_s <= bound:
                    self.latency_buckets[index] += 1
                    break

    def idle(self) -> None:
        """Nothing to do is progress too: a group without work is never stalled."""
        with self.lock:
            if not self.in_hand_entries:
                self.progress_at = time.monotonic()

    def seconds_since_progress(self) -> float:
        return max(0.0, time.monotonic() - self.progress_at)

    def stalled(self) -> bool:
        """Work in hand and no batch finished for longer than ``progress_limit_s``."""
        return bool(self.in_hand_entries) and self.seconds_since_progress() > self.progress_limit_s

    def not_ready_reason(self) -> str | None:
        """Why this group is not ready, or None when it is."""
        if self.upgrade_needed is not None:
            return self.upgrade_needed
        if self.stalled():
            return (
                f"group {self.group} made no progress for {self.seconds_since_progress():.0f} s "
                f"with {self.in_hand_entries} entries in hand"
                + (f" (last error: {self.last_error})" if self.last_error else "")
            )
        if not self.ready:
            return self.last_error or f"group {self.group} is starting"
        return None

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
                "in_hand_entries": self.in_hand_entries,
                "in_hand_records": self.in_hand_records,
                "seconds_since_progress": round(self.seconds_since_progress(), 3),
                "stalled": self.stalled(),
                "upgrade_needed": self.upgrade_needed,
            }


def entry_records(fields: Mapping[bytes, bytes]) -> int:
    """The record count an entry announces (its ``n`` field), without decoding it; 1
    for an entry that has none (it becomes one dead letter)."""
    raw = fields.get(FIELD_COUNT)
    if isinstance(raw, bytes) and raw.isdigit() and len(raw) <= 9:
        return max(1, int(raw))
    return 1


class ReadSizer:
    """How many entries to read per stream, so one read holds about ``batch_records``
    records whatever batch size the producers chose, and never suddenly far more.

    * The count grows at most twofold per batch (one batch of small entries cannot
      make the next read take thousands of large ones) and shrinks at once.
    * It is capped so that ``count`` entries of the largest size seen lately on each
      stream stay within one batch's share of the records-in-hand limit (with many
      producers' streams, ``count`` per stream shrinks accordingly). "Lately"
      halves every read in which a stream's entries were smaller.
    """

    def __init__(self, settings: LoopSettings, streams: Sequence[str]) -> None:
        self.batch_records = settings.batch_records
        self.per_read = max(1, settings.records_in_hand_limit // BATCHES_IN_HAND)
        self.count = 1
        self._largest: dict[str, int] = dict.fromkeys(streams, 1)

    def observe(self, sizes: Sequence[tuple[str, int]]) -> None:
        """Record the (stream, records) of the entries one read returned, and size the
        next read."""
        if not sizes:
            return
        seen: dict[str, int] = {}
        for stream, records in sizes:
            seen[stream] = max(seen.get(stream, 0), records)
            self._largest.setdefault(stream, 1)  # a producer's stream met for the first time
        for stream in self._largest:
            self._largest[stream] = max(seen.get(stream, 0), self._largest[stream] // 2, 1)
        total = sum(records for _, records in sizes)
        per_entry = max(1.0, total / len(sizes))
        ideal = max(1, round(self.batch_records / per_entry))
        cap = max(1, self.per_read // sum(self._largest.values()))
        self.count = max(1, min(ideal, 2 * self.count, cap, self.batch_records))


def slices(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """Cut entries of ``sizes`` records into consecutive (start, stop) runs holding at
    most ``limit`` records each (an entry larger than ``limit`` is a run alone)."""
    runs: list[tuple[int, int]] = []
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and total + size > limit:
            runs.append((start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs
