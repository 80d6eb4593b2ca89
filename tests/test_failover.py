"""A PostgreSQL failover as the worker sees it, under load, against the machine's
PostgreSQL: the worker's sessions are cut (some in the middle of a COPY) and the new
ones are read-only (SQLSTATE 25006) until the failover is over. Nothing may become a
dead letter, and every record must be stored once afterwards."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.loop import LoopSettings
from tests.conftest import PG_ADMIN_URL
from tests.factories import add_traces, numbered_trace
from tests.reliability import report
from tests.waiting import wait_until
from tests.worker_helpers import migrated, pending, scalar

RECORDS = 3_000
PER_ENTRY = 10


def _terminate_sessions(name: str) -> int:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def _read_only(name: str, on: bool) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        if on:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        else:
            admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')


@pytest.fixture
def db(database_url: str) -> Iterator[str]:
    yield migrated(database_url)
    _read_only(database_url.rsplit("/", 1)[1], False)


@pytest.mark.slow
def test_a_failover_under_load_makes_no_dead_letter_and_loses_nothing(
    redis_client, keys, db
) -> None:
    name = db.rsplit("/", 1)[1]
    pool = create_pool(db, min_size=1, max_size=2, timeout_s=2)
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "w1")
    settings = LoopSettings(
        batch_records=200, block_ms=50, retry_initial_s=0.02, retry_max_s=0.2, pipeline=True
    )
    loop = PersistLoop(consumer, LLMTraceRepository(pool), settings, pool=pool)
    stop = threading.Event()
    sent = threading.Event()
    traces = [numbered_trace(i) for i in range(RECORDS)]

    def produce() -> None:
        for start in range(0, RECORDS, PER_ENTRY):
            add_traces(redis_client, keys, traces[start : start + PER_ENTRY])
            if start % 200 == 0:
                threading.Event().wait(0.02)  # a steady flow, not one burst
        sent.set()

    worker = threading.Thread(target=loop.run, args=(stop,))
    producer = threading.Thread(target=produce)
    terminated = 0
    try:
        worker.start()
        producer.start()
        wait_until(lambda: loop.stats.records >= 300, 60, "the first rows")
        # Sessions cut while batches are being stored: some in the middle of a COPY.
        while loop.stats.records < 900 and not sent.is_set():
            terminated += _terminate_sessions(name)
            threading.Event().wait(0.01)
        # The failover: every new session is read-only until it is over.
        _read_only(name, True)
        terminated += _terminate_sessions(name)
        wait_until(lambda: "SQLSTATE 25006" in (loop.stats.last_error or ""), 60, "read-only")
        assert loop.stats.ready is False
        read_only_retries = loop.stats.retries
        wait_until(lambda: loop.stats.retries >= read_only_retries + 5, 60, "retries")
        stored_during = scalar(db, "SELECT count(*) FROM llm_traces")
        _read_only(name, False)
        terminated += _terminate_sessions(name)
        producer.join(120)
        assert sent.is_set()
        wait_until(lambda: scalar(db, "SELECT count(*) FROM llm_traces") == RECORDS, 120, "all")
        wait_until(lambda: pending(redis_client, keys) == 0, 60, "all acknowledged")
    finally:
        stop.set()
        worker.join(60)
        producer.join(60)
        pool.close()
    assert not worker.is_alive()
    dead_letters = redis_client.xlen(keys.dead_letters(PERSIST_GROUP))
    distinct = scalar(db, "SELECT count(DISTINCT decision_id) FROM llm_traces")
    report(
        "failover",
        {
            "records_sent": RECORDS,
            "rows": RECORDS,
            "distinct_rows": distinct,
            "dead_letters": dead_letters,
            "sessions_terminated": terminated,
            "retries": loop.stats.retries,
            "rows_when_read_only_ended": stored_during,
        },
    )
    assert dead_letters == 0
    assert distinct == RECORDS
    assert loop.stats.dead_letters == 0
    assert loop.stats.ready is True
