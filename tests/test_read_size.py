"""How many entries a group loop reads at a time, against the machine's Redis: about
``batch_records`` records whatever the producers' batch size, growing at most twofold
per batch, so a batch of small entries never makes the next read pull a mountain of
large ones, and never more records in hand than the limit."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.stream.consumer import Consumer, Entry
from fleettrace_worker.stream.deadletter import DeadLetter
from fleettrace_worker.stream.loop import GroupLoop, LoopSettings, Prepared
from fleettrace_worker.stream.loopstate import ReadSizer, entry_records, slices
from tests.factories import add_traces, numbered_trace
from tests.worker_helpers import pending

BATCH = 100


class _Counting(GroupLoop[int]):
    """Delivers nothing anywhere; remembers each batch's records and what was in hand."""

    def __init__(self, consumer: Consumer, settings: LoopSettings) -> None:
        super().__init__(consumer, settings)
        self.batches: list[int] = []
        self.in_hand: list[int] = []

    def prepare(self, entries: Sequence[Entry]) -> Prepared[int]:
        records = sum(entry_records(e.fields) for e in entries)
        self.batches.append(records)
        self.in_hand.append(self.stats.in_hand_records)
        return Prepared(records, records, [])

    def deliver(self, payload: int) -> list[DeadLetter]:
        return []


def _entries(client, keys, count: int, size: int, start: int) -> int:
    for i in range(count):
        base = start + i * size
        add_traces(client, keys, [numbered_trace(base + j) for j in range(size)])
    return start + count * size


def test_small_entries_do_not_make_the_next_read_pull_thousands_of_large_ones(
    redis_client, keys
) -> None:
    at = _entries(redis_client, keys, 6, 50, 0)
    at = _entries(redis_client, keys, 4, 1, at)  # one batch' worth of small entries
    at = _entries(redis_client, keys, 60, 50, at)
    settings = LoopSettings(batch_records=BATCH, burst=True)
    loop = _Counting(Consumer(redis_client, keys, PERSIST_GROUP, "c1"), settings)
    loop.run(threading.Event())
    assert sum(loop.batches) == at == 3_304
    assert pending(redis_client, keys) == 0
    limit = settings.records_in_hand_limit
    assert limit == 3 * BATCH
    # Before the fix the read after the small entries held 400 records here.
    assert max(loop.in_hand) <= limit
    assert max(loop.batches) <= BATCH


def test_the_read_count_grows_at_most_twofold_and_shrinks_at_once() -> None:
    sizer = ReadSizer(LoopSettings(batch_records=1_000), ["t", "m"])
    counts = []
    for _ in range(12):
        sizer.observe([("t", 1)] * sizer.count)
        counts.append(sizer.count)
    assert counts[:6] == [2, 4, 8, 16, 32, 64]
    assert all(b <= 2 * a for a, b in itertools.pairwise(counts))
    assert counts[-1] <= 1_000
    sizer.observe([("t", 1_000)])  # a large entry: the next read takes as few as it can
    assert sizer.count == 1


def test_a_read_is_cut_into_batches_of_at_most_batch_records() -> None:
    assert slices([50, 50, 50, 1, 1, 200, 10], 100) == [(0, 2), (2, 5), (5, 6), (6, 7)]
    assert slices([], 100) == []
