"""A delivery that cannot finish: a row lock held by another session blocks the
worker's COPY of the same key. The statement times out and is retried, the group says
it is stalled, no other consumer takes the batch over meanwhile, and once the lock is
gone every record is stored once and nothing is dead-lettered."""

from __future__ import annotations

import threading

import psycopg
import pytest

from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import (
    TRACE_COLUMNS,
    TRACES_TABLE,
    LLMTraceRepository,
    _copy,
    _trace_row,
)
from fleettrace_worker.store.tree_store import SOURCE_COLUMNS
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.loop import LoopSettings
from tests.factories import add_traces, numbered_trace
from tests.waiting import wait_until
from tests.worker_helpers import http_get, migrated, pending, scalar, serving_worker

CLAIM_IDLE_MS = 2_000


def _hold_row_lock(db: str, trace: object) -> psycopg.Connection:
    """Another session inserting the same trace_id and not committing: a COPY of that
    key waits for it (unique index check), holding no table lock of its own."""
    conn = psycopg.connect(db)
    # The worker's own COPY, so the row has every column the table has, its source
    # (producer, namespace) included: schema 6 refuses a row without a namespace.
    row = (*_trace_row(trace), None, "held")  # type: ignore[arg-type]
    _copy(conn, TRACES_TABLE, TRACE_COLUMNS + SOURCE_COLUMNS, [row])
    return conn


@pytest.mark.slow
def test_a_blocked_copy_times_out_is_kept_from_others_and_stored_once(
    redis_client, keys, database_url
) -> None:
    db = migrated(database_url)
    traces = [numbered_trace(i) for i in range(50)]
    add_traces(redis_client, keys, traces)
    holder = _hold_row_lock(db, traces[17])
    pool = create_pool(db, min_size=1, max_size=1, lock_timeout_ms=300)
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "w1", claim_idle_ms=CLAIM_IDLE_MS)
    settings = LoopSettings(
        block_ms=50,
        retry_initial_s=0.05,
        retry_max_s=0.2,
        progress_limit_s=1.0,
        keep_interval_s=0.2,
        pipeline=True,
    )
    loop = PersistLoop(consumer, LLMTraceRepository(pool), settings, pool=pool)
    other = Consumer(redis_client, keys, PERSIST_GROUP, "w2", claim_idle_ms=CLAIM_IDLE_MS)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: loop.stats.retries >= 3, 60, "timed-out attempts")
        assert "canceling statement due to lock timeout (SQLSTATE 55P03)" in (
            loop.stats.last_error or ""
        )
        wait_until(loop.stats.stalled, 60, "reported stalled")
        reason = loop.stats.not_ready_reason() or ""
        assert reason.startswith("group persist made no progress for ")
        assert "with 1 entries in hand" in reason
        snapshot = loop.stats.snapshot()
        assert snapshot["stalled"] is True
        assert snapshot["in_hand_entries"] == 1
        assert snapshot["in_hand_records"] == 50
        # Longer than claim_idle_ms in hand: kept fresh, so nobody else takes it over.
        wait_until(
            lambda: loop.stats.seconds_since_progress() > 2 * CLAIM_IDLE_MS / 1000,
            60,
            "held past claim_idle_ms",
        )
        assert other.claim(count=100) == []
        assert pending(redis_client, keys) == 1
        holder.commit()  # the other session's row is stored; the worker's COPY can go on
        wait_until(lambda: pending(redis_client, keys) == 0, 60, "stored and acknowledged")
        assert loop.stats.not_ready_reason() is None
    finally:
        stop.set()
        thread.join(60)
        holder.close()
        pool.close()
    assert not thread.is_alive()
    assert scalar(db, "SELECT count(*) FROM llm_traces") == 50
    assert scalar(db, "SELECT count(DISTINCT trace_id) FROM llm_traces") == 50
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0
    assert loop.stats.dead_letters == 0
    assert loop.stats.records == 50


@pytest.mark.slow
def test_a_worker_stalled_on_a_lock_answers_readyz_503_until_it_gets_through(
    redis_url, redis_client, keys, database_url
) -> None:
    db = migrated(database_url)
    traces = [numbered_trace(i) for i in range(20)]
    holder = _hold_row_lock(db, traces[3])
    serving = serving_worker(
        redis_url, db, keys, join_s=60, consumer="s1", lock_timeout_ms=300, progress_limit_s=1.0
    )
    with serving as (worker, base):
        try:
            wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "ready")
            add_traces(redis_client, keys, traces)
            wait_until(lambda: "made no progress" in http_get(f"{base}/readyz")[1], 60, "stalled")
            status, body = http_get(f"{base}/readyz")
            assert status == 503
            assert body.startswith("not ready: group persist made no progress for ")
            assert "(SQLSTATE 55P03)" in body
            metrics = http_get(f"{base}/metrics")[1]
            [since] = [
                line for line in metrics.splitlines()
                if line.startswith('fleettrace_worker_seconds_since_progress{group="persist"}')
            ]  # fmt: skip
            assert float(since.rsplit(" ", 1)[1]) > 1.0
            [group] = worker.health()["groups"]  # type: ignore[misc]
            assert group["stalled"] is True and group["in_hand_entries"] == 1
            holder.rollback()
            wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "ready again")
        finally:
            holder.close()
    assert scalar(db, "SELECT count(*) FROM llm_traces") == 20
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0
    assert pending(redis_client, keys) == 0
