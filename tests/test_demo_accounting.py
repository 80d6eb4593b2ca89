"""The demo's accounting: rows and dead letters of this run only, the records a dead
letter stands for, and the live figures from the start of the run."""

from __future__ import annotations

import pytest
import redis

from fleettrace.codec import Kind
from fleettrace.keys import EMITTER_RECORDS, FIELD_COUNT, Keys
from fleettrace_worker.demo.accounting import (
    DeadLetterCounter,
    LiveFigures,
    count_rows,
    dead_letter_records,
)
from fleettrace_worker.demo.settings import new_run_id
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store import database
from fleettrace_worker.store.migrations import migrate
from fleettrace_worker.stream.deadletter import DeadLetter

pytestmark = pytest.mark.timeout(300)


def test_rows_and_dead_letters_are_counted_for_this_run_only(
    redis_client: redis.Redis, database_url: str, keys: Keys
) -> None:
    stream = keys.dead_letters(PERSIST_GROUP)
    before = DeadLetter.for_entry(keys.traces, "1-0", {FIELD_COUNT: b"7"}, "c", "old")
    redis_client.xadd(stream, before.to_fields())
    counter = DeadLetterCounter(redis_client, keys)
    assert counter.records() == 0
    whole = DeadLetter.for_entry(keys.traces, "2-0", {FIELD_COUNT: b"5"}, "c", "bad envelope")
    one = DeadLetter.for_record(
        keys.traces,
        "3-0",
        "c",
        batch_id="b",
        kind=Kind.TRACE,
        position=0,
        record=b"{}",
        reason="prompt_tokens: must be >= 0",
    )
    redis_client.xadd(stream, whole.to_fields())
    redis_client.xadd(stream, one.to_fields())
    assert counter.records() == 6

    pool = database.create_pool(database_url)
    try:
        migrate(pool)
        assert count_rows(pool, new_run_id()) == (0, 0, 0)
    finally:
        pool.close()


def test_a_dead_letter_stands_for_one_record_or_its_entry_count() -> None:
    assert (
        dead_letter_records(DeadLetter.for_entry("s", "1-0", {FIELD_COUNT: b"12"}, "c", "r")) == 12
    )
    assert dead_letter_records(DeadLetter.for_entry("s", "1-0", {b"x": b"y"}, "c", "r")) == 1
    assert dead_letter_records(DeadLetter("r", "s", "1-0", "c")) == 1
    record = DeadLetter.for_record(
        "s", "1-0", "c", batch_id="b", kind=Kind.TRACE, position=3, record=b"{}", reason="r"
    )
    assert dead_letter_records(record) == 1


def test_the_live_figures_count_from_the_start_of_the_run(
    redis_client: redis.Redis, keys: Keys
) -> None:
    redis_client.hset(keys.emitter, EMITTER_RECORDS, 40)
    figures = LiveFigures(redis_client, keys, "demo-x")
    redis_client.hincrby(keys.emitter, EMITTER_RECORDS, 2)
    assert figures.read() == (2, 0.0, 0, 0)
