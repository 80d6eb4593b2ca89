"""Record ids made on the caller's thread: UUID version 7, unique, in order."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import pytest

from fleettrace import ids


def test_an_id_is_a_version_7_uuid_of_the_current_millisecond() -> None:
    before_ms = time.time_ns() // 1_000_000
    made = uuid.UUID(int=ids.uuid7_int())
    after_ms = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before_ms <= made.int >> 80 <= after_ms
    text = ids.uuid7_hex()
    assert len(text) == 32 and uuid.UUID(hex=text).version == 7


def test_ids_of_one_thread_only_go_up_even_when_the_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = [ids.uuid7_int() for _ in range(20_000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    now = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: now - 3_600 * 10**9)  # an hour back
    stepped_back = [ids.uuid7_int() for _ in range(100)]
    assert made[-1] < stepped_back[0] and stepped_back == sorted(stepped_back)
    assert {i >> 80 for i in stepped_back} == {made[-1] >> 80}


def test_ids_made_by_many_threads_at_once_are_all_different() -> None:
    found: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def make(into: list[int]) -> None:
        start.wait()
        into.extend(ids.uuid7_int() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(into,)) for into in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for per_thread in found for i in per_thread]
    assert len(set(every)) == 80_000
    assert all(per_thread == sorted(per_thread) for per_thread in found)


def _ids_in_child(conn: multiprocessing.connection.Connection) -> None:
    conn.send([ids.uuid7_int() for _ in range(5_000)])
    conn.close()


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    ids.uuid7_int()  # the parent's generator is in use before the fork
    context = multiprocessing.get_context("fork")
    children = []
    for _ in range(3):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_ids_in_child, args=(send,))
        process.start()
        children.append((process, receive))
    mine = [ids.uuid7_int() for _ in range(5_000)]
    theirs = []
    for process, receive in children:
        theirs.append(receive.recv())
        process.join(10)
        assert process.exitcode == 0
    every = mine + [i for made in theirs for i in made]
    assert len(set(every)) == len(every) == 20_000


def test_a_stamp_keeps_its_microsecond_and_makes_a_version_7_id_of_it() -> None:
    wall_s = 1_764_855_000.123456
    stamp = ids.stamp_at(wall_s)
    assert ids.stamp_us(stamp) == 1_764_855_000_123_456
    made = uuid.UUID(int=ids.uuid7_of_stamp(stamp))
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert made.int >> 80 == 1_764_855_000_123  # its millisecond
    assert (made.int >> 64) & 0xFFF == 456 * 4096 // 1000  # the fraction of it
    assert ids.uuid7_of_stamp(stamp) == ids.uuid7_of_stamp(stamp)  # the same id each time


def test_ids_of_later_stamps_sort_after_earlier_ones_and_never_repeat() -> None:
    now = time.time()
    stamps = [ids.stamp_at(now + i / 10_000_000) for i in range(20_000)]
    made = [ids.uuid7_of_stamp(stamp) for stamp in stamps]
    assert made == sorted(made) and len(set(made)) == len(made)
    same_time = [ids.uuid7_of_stamp(ids.stamp_at(now)) for _ in range(1_000)]
    assert same_time == sorted(same_time) and len(set(same_time)) == 1_000
