"""The persist loop against the machine's Redis and a fresh PostgreSQL database:
rows committed before acknowledgement, bad input to dead letters, good input stored."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import psycopg
import pytest
import redis

from fleettrace.codec import encode_record, new_batch_id
from fleettrace.keys import Keys
from fleettrace_worker.errors import ForwardingDeferred, SchemaVersionError
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.consumer import Consumer, Entry
from fleettrace_worker.stream.deadletter import DeadLetter, list_dead_letters, replay_dead_letters
from fleettrace_worker.stream.loop import GroupLoop, LoopSettings, Prepared
from tests.factories import (
    add_samples,
    add_traces,
    numbered_sample,
    numbered_trace,
    sample_entry,
    trace_entry,
)
from tests.waiting import wait_until
from tests.worker_helpers import migrated, pending, sample_rows, scalar, trace_rows

BURST = LoopSettings(burst=True, retry_initial_s=0.01, retry_max_s=0.05)


@pytest.fixture
def db(database_url) -> str:
    return migrated(database_url)


@pytest.fixture
def pool(db) -> Iterator[object]:
    pool = create_pool(db, min_size=1, max_size=2)
    yield pool
    pool.close()


def _loop(redis_client, keys, pool, *, name="w1", settings=BURST, claim_idle_ms=30_000):
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, name, claim_idle_ms=claim_idle_ms)
    return PersistLoop(consumer, LLMTraceRepository(pool), settings, pool=pool)


def test_good_entries_become_rows_and_are_acknowledged(redis_client, keys, db, pool) -> None:
    traces = [numbered_trace(i) for i in range(30)]
    for start in range(0, 30, 10):
        add_traces(redis_client, keys, traces[start : start + 10])
    add_samples(redis_client, keys, [numbered_sample(i) for i in range(5)])
    loop = _loop(redis_client, keys, pool)
    loop.run(threading.Event())
    assert trace_rows(db) == 30
    assert sample_rows(db) == 5
    assert pending(redis_client, keys) == 0
    assert loop.stats.records == 35
    assert loop.stats.ready is True
    assert loop.stats.dead_letters == 0
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT model, prompt_tokens FROM llm_traces WHERE trace_id = %s",
            (traces[7].trace_id,),
        ).fetchone()
    assert row == ("gpt-4o", traces[7].prompt_tokens)


def test_bad_entries_and_records_are_dead_letters_and_the_good_ones_stored(
    redis_client, keys, db, pool
) -> None:
    good = [numbered_trace(i) for i in range(4)]
    lines = [encode_record(t) for t in good]
    lines.insert(2, b'{"provider": "openai", "model": 5}')
    batch_id = new_batch_id()
    mixed = {b"v": b"1", b"k": b"t", b"b": batch_id.encode(), b"n": b"5", b"d": b"\n".join(lines)}
    redis_client.xadd(keys.traces, mixed)
    # Version 0 was never written: older than anything readable, it is bad input.
    redis_client.xadd(keys.traces, {b"v": b"0", b"junk": b"\xff\xfe"})
    redis_client.xadd(keys.metrics, {b"hello": b"world"})
    loop = _loop(redis_client, keys, pool)
    loop.run(threading.Event())
    assert trace_rows(db) == 4
    assert pending(redis_client, keys) == 0
    letters = [d for _, d in list_dead_letters(redis_client, keys, PERSIST_GROUP)]
    assert len(letters) == 3
    by_reason = {d.reason: d for d in letters}
    record = next(d for d in letters if d.record is not None)
    assert record.reason.startswith("model:")
    assert (record.batch_id, record.position, record.kind) == (batch_id, 2, "t")
    assert record.record == lines[2]
    assert record.consumer == "w1"
    envelope = by_reason["unknown format version '0'; this code reads version 1, 2, 3"]
    assert envelope.original == {b"v": b"0", b"junk": b"\xff\xfe"}
    assert any("no field 'v'" in reason for reason in by_reason)
    assert loop.stats.dead_letters == 3


def test_an_entry_delivered_too_often_is_a_dead_letter(redis_client, keys, db, pool) -> None:
    entry_id = add_traces(redis_client, keys, [numbered_trace(1)])
    for name in ("a", "b"):  # two consumers read it and die without acknowledging
        Consumer(redis_client, keys, PERSIST_GROUP, name, claim_idle_ms=0).ensure_groups()
    Consumer(redis_client, keys, PERSIST_GROUP, "a").read(count=10, block_ms=None)
    Consumer(redis_client, keys, PERSIST_GROUP, "b", claim_idle_ms=0).claim(count=10)
    settings = LoopSettings(burst=True, max_deliveries=2, claim_interval_s=0)
    loop = _loop(redis_client, keys, pool, name="c", settings=settings, claim_idle_ms=0)
    loop.run(threading.Event())
    assert trace_rows(db) == 0
    [(dead_id, letter)] = list_dead_letters(redis_client, keys, PERSIST_GROUP)
    assert letter.reason == "delivered 3 times, more than max_deliveries=2"
    assert letter.entry_id == entry_id
    assert pending(redis_client, keys) == 0
    # The cause is gone: replayed, it is stored exactly once, however often replayed.
    assert replay_dead_letters(redis_client, keys, PERSIST_GROUP).replayed == [dead_id]
    redis_client.xadd(keys.traces, letter.original)  # a replay repeated after a crash
    _loop(redis_client, keys, pool).run(threading.Event())
    assert trace_rows(db) == 1


def _poison_check(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE llm_traces ADD CONSTRAINT no_poison CHECK (model <> 'poison')")


def test_a_record_postgres_refuses_is_the_only_dead_letter_of_its_batch(
    redis_client, keys, db, pool
) -> None:
    _poison_check(db)
    first = add_traces(redis_client, keys, [numbered_trace(i) for i in range(7)])
    batch = [numbered_trace(i) for i in range(7, 20)]
    batch[5] = numbered_trace(12, model="poison")
    poison = add_traces(redis_client, keys, batch)
    add_samples(redis_client, keys, [numbered_sample(i) for i in range(6)])
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(20, 23)])
    loop = _loop(redis_client, keys, pool, settings=LoopSettings(burst=True, batch_records=100))
    loop.run(threading.Event())
    assert trace_rows(db) == 22
    assert sample_rows(db) == 6
    [(dead_id, letter)] = list_dead_letters(redis_client, keys, PERSIST_GROUP)
    assert (letter.entry_id, letter.position, letter.kind) == (poison, 5, "t")
    assert letter.record == encode_record(batch[5])
    assert letter.reason.startswith("refused: PostgreSQL refused the rows: new row for relation")
    assert "no_poison" in letter.reason and "(SQLSTATE 23514)" in letter.reason
    assert first != poison and pending(redis_client, keys) == 0
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE llm_traces DROP CONSTRAINT no_poison")
    assert replay_dead_letters(redis_client, keys, PERSIST_GROUP, [dead_id]).replayed == [dead_id]
    _loop(redis_client, keys, pool).run(threading.Event())
    assert scalar(db, "SELECT count(*) FROM llm_traces WHERE model = 'poison'") == 1
    assert trace_rows(db) == 23


def test_a_lone_refused_sample_among_traces_is_found_too(redis_client, keys, db, pool) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE metric_samples ADD CONSTRAINT small CHECK (value < 3)")
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(5)])
    samples = add_samples(redis_client, keys, [numbered_sample(i) for i in range(4)])
    _loop(redis_client, keys, pool).run(threading.Event())
    assert trace_rows(db) == 5
    assert sample_rows(db) == 3
    [(_, letter)] = list_dead_letters(redis_client, keys, PERSIST_GROUP)
    assert (letter.entry_id, letter.position, letter.kind) == (samples, 3, "m")


def test_a_redelivered_batch_adds_no_rows(redis_client, keys, db, pool) -> None:
    traces = [numbered_trace(i) for i in range(5)]
    fields = trace_entry(traces)
    samples = sample_entry([numbered_sample(1), numbered_sample(2)])
    for _ in range(2):
        redis_client.xadd(keys.traces, fields)
        redis_client.xadd(keys.metrics, samples)
    _loop(redis_client, keys, pool).run(threading.Event())
    assert trace_rows(db) == 5
    assert sample_rows(db) == 2


def test_a_database_without_the_schema_is_refused(redis_client, keys, database_url) -> None:
    pool = create_pool(database_url, min_size=1, max_size=1)
    try:
        with pytest.raises(SchemaVersionError, match="no fleettrace schema"):
            _loop(redis_client, keys, pool).run(threading.Event())
    finally:
        pool.close()


@pytest.mark.slow
def test_postgres_away_keeps_entries_in_hand_until_it_returns(
    redis_client, keys, private_postgres
) -> None:
    db = migrated(private_postgres.url)
    pool = create_pool(db, min_size=1, max_size=1, timeout_s=1)
    try:
        add_traces(redis_client, keys, [numbered_trace(i) for i in range(10)])
        loop = _loop(redis_client, keys, pool, settings=LoopSettings(burst=True, retry_max_s=0.2))
        loop.setup()
        private_postgres.stop()
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,))
        thread.start()
        try:
            wait_until(lambda: loop.stats.retries >= 2, 30, "two retries")
        except AssertionError:
            stop.set()
            raise
        assert loop.stats.ready is False
        assert "unavailable" in (loop.stats.last_error or "")
        assert pending(redis_client, keys) == 1
        private_postgres.start()
        thread.join(60)
        assert not thread.is_alive()
        assert trace_rows(db) == 10
        assert pending(redis_client, keys) == 0
        assert loop.stats.ready is True
    finally:
        pool.close()


def test_told_to_stop_while_waiting_leaves_the_batch_pending(
    redis_client, keys, private_postgres
) -> None:
    db = migrated(private_postgres.url)
    pool = create_pool(db, min_size=1, max_size=1, timeout_s=1)
    try:
        add_traces(redis_client, keys, [numbered_trace(1)])
        loop = _loop(redis_client, keys, pool, settings=LoopSettings(retry_initial_s=5))
        loop.setup()
        private_postgres.stop()
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,))
        thread.start()
        while loop.stats.retries < 1 and thread.is_alive():
            threading.Event().wait(0.05)
        stop.set()
        thread.join(30)
        assert not thread.is_alive()
        assert pending(redis_client, keys) == 1
    finally:
        pool.close()


class _Flaky(GroupLoop[list[Entry]]):
    """A group whose far side defers every delivery, honouring a Retry-After."""

    def prepare(self, entries: Sequence[Entry]) -> Prepared[list[Entry]]:
        return Prepared(list(entries), len(entries), [])

    def deliver(self, payload: list[Entry]) -> list[DeadLetter]:
        raise ForwardingDeferred("429 slow down", retry_after_s=0.01)


def test_pipelined_loop_stores_everything_and_dead_letters_the_bad(
    redis_client, keys, db, pool
) -> None:
    for start in range(0, 50, 5):
        add_traces(redis_client, keys, [numbered_trace(i) for i in range(start, start + 5)])
    redis_client.xadd(keys.traces, {b"v": b"0"})
    settings = LoopSettings(burst=True, pipeline=True, batch_records=10)
    loop = _loop(redis_client, keys, pool, settings=settings)
    loop.run(threading.Event())
    assert trace_rows(db) == 50
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 1
    assert pending(redis_client, keys) == 0
    assert loop.stats.batches > 1


class _Broken(_Flaky):
    def deliver(self, payload: list[Entry]) -> list[DeadLetter]:
        raise RuntimeError("a bug")


def test_a_bug_in_the_delivering_thread_reaches_the_caller(redis_client, keys) -> None:
    add_traces(redis_client, keys, [numbered_trace(1)])
    settings = LoopSettings(burst=True, pipeline=True)
    loop = _Broken(Consumer(redis_client, keys, "langsmith", "f1"), settings)
    with pytest.raises(RuntimeError, match="a bug"):
        loop.run(threading.Event())
    assert pending(redis_client, keys, "langsmith") == 1


def test_stopping_a_pipelined_loop_while_it_retries(redis_client, keys) -> None:
    add_traces(redis_client, keys, [numbered_trace(1)])
    add_traces(redis_client, keys, [numbered_trace(2)])
    settings = LoopSettings(pipeline=True, retry_initial_s=0.05, block_ms=50)
    loop = _Flaky(Consumer(redis_client, keys, "langsmith", "f1"), settings)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    wait_until(lambda: loop.stats.retries >= 2, 30, "retries")
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert pending(redis_client, keys, "langsmith") == 2


def test_redis_away_is_waited_for_and_nothing_is_lost(private_redis, db, pool) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=2, socket_connect_timeout=2)
    keys = Keys("outage")
    add_traces(client, keys, [numbered_trace(i) for i in range(10)])
    settings = LoopSettings(block_ms=100, retry_initial_s=0.05, retry_max_s=0.2, pipeline=True)
    loop = _loop(client, keys, pool, settings=settings)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: trace_rows(db) == 10, 60, "first rows")
        private_redis.stop()
        wait_until(lambda: loop.stats.ready is False, 60, "not ready")
        assert (loop.stats.last_error or "").startswith("reading the streams: ")
        private_redis.start()  # AOF: the stream and the group come back
        add_traces(client, keys, [numbered_trace(i) for i in range(10, 30)])
        wait_until(lambda: trace_rows(db) == 30, 60, "catch up")
        wait_until(lambda: loop.stats.ready is True, 30, "ready again")
    finally:
        stop.set()
        thread.join(30)
    assert pending(client, keys) == 0
    client.close()


def test_an_error_the_table_does_not_list_keeps_the_batch_until_it_is_fixed(
    redis_client, keys, db, pool
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE metric_samples RENAME COLUMN labels TO labels_gone")
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(3)])
    add_samples(redis_client, keys, [numbered_sample(i) for i in range(3)])
    settings = LoopSettings(retry_initial_s=0.01, retry_max_s=0.05, block_ms=50)
    loop = _loop(redis_client, keys, pool, settings=settings)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: loop.stats.retries >= 3, 60, "retries")
        assert "failed the statement" in (loop.stats.last_error or "")
        assert "(SQLSTATE 42703)" in (loop.stats.last_error or "")
        assert loop.stats.not_ready_reason() == loop.stats.last_error
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ALTER TABLE metric_samples RENAME COLUMN labels_gone TO labels")
        wait_until(lambda: pending(redis_client, keys) == 0, 60, "stored")
    finally:
        stop.set()
        thread.join(60)
    assert (trace_rows(db), sample_rows(db)) == (3, 3)
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0
