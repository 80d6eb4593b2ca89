"""Fleets kept apart in PostgreSQL: every stored row says its namespace (the workers
stamp their own), and schema version six brings the namespace to rows of before. Reads
of one namespace: tests/test_namespaces_reads.py; prune: tests/test_namespaces_prune.py;
the Redis side (dead letters, live counters, groups): tests/test_namespaces_redis.py."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
import redis

from fleettrace.environment import NAMESPACE_VARIABLE
from fleettrace.keys import Keys
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.process import Worker
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.factories import (
    NOW,
    _samples,
    add_samples,
    add_traces,
    llm_trace,
    metric_sample,
    numbered_trace,
)
from tests.waiting import wait_until
from tests.worker_helpers import migrate_from_processes, migrated

# every row carries its namespace ---------------------------------------------------


def test_a_row_without_a_namespace_is_refused(database_url: str) -> None:
    url = migrated(database_url)
    with psycopg.connect(url) as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="llm_traces_with_namespace"):
            conn.execute(
                "INSERT INTO llm_traces (trace_id, provider, model, latency_ms, tool_calls, "
                "streaming, retry_count, started_at) "
                "VALUES (gen_random_uuid(), 'p', 'm', 1, '{}', false, 0, now())"
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation, match="metric_samples_with_namespace"):
            conn.execute(
                "INSERT INTO metric_samples (batch_id, position, key, labels, value, observed_at) "
                "VALUES (gen_random_uuid(), 0, 'k', '{}', 1, now())"
            )


def test_rows_stored_without_sources_carry_the_configured_namespace(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = migrated(database_url)
    monkeypatch.setenv(NAMESPACE_VARIABLE, "configured-here")
    with database.create_pool(url) as pool:
        LLMTraceRepository(pool).store([llm_trace()], _samples(2, 0, NOW))
        LLMTraceRepository(pool).store([llm_trace()], namespace="given")
    with psycopg.connect(url) as conn:
        traces = conn.execute("SELECT namespace FROM llm_traces ORDER BY 1").fetchall()
        samples = conn.execute("SELECT DISTINCT namespace FROM metric_samples").fetchall()
    assert traces == [("configured-here",), ("given",)]
    assert samples == [("configured-here",)]


@pytest.mark.slow
def test_workers_of_two_namespaces_stamp_each_row_with_its_own(
    redis_url: str, database_url: str, redis_client: redis.Redis
) -> None:
    url = migrated(database_url)
    spaces = [Keys(f"test-{uuid.uuid4().hex[:12]}") for _ in range(2)]
    workers = [
        Worker(
            WorkerSettings(redis_url, url, namespace=k.namespace, consumer=f"w{i}", block_ms=100)
        )
        for i, k in enumerate(spaces)
    ]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for thread in threads:
        thread.start()

    def counts() -> set[tuple[str, str | None, int]]:
        with psycopg.connect(url) as conn:
            return {
                (table, ns, int(n))
                for table in ("llm_traces", "metric_samples")
                for ns, n in conn.execute(
                    f"SELECT namespace, count(*) FROM {table} GROUP BY 1"
                ).fetchall()
            }

    expected = {
        ("llm_traces", spaces[0].namespace, 3),
        ("llm_traces", spaces[1].namespace, 2),
        ("metric_samples", spaces[0].namespace, 4),
        ("metric_samples", spaces[1].namespace, 1),
    }
    try:
        for keys, traces, samples in ((spaces[0], 3, 4), (spaces[1], 2, 1)):
            add_traces(redis_client, keys, [numbered_trace(i) for i in range(traces)])
            add_samples(redis_client, keys, [metric_sample(value=float(i)) for i in range(samples)])
        wait_until(lambda: counts() == expected, 30, "rows of both namespaces")
    finally:
        for worker in workers:
            worker.stop.set()
        for thread in threads:
            thread.join(30)
        for keys in spaces:
            for key in redis_client.scan_iter(match=f"{keys.prefix}*", count=1000):
                redis_client.delete(key)
    assert counts() == expected


# the migration ------------------------------------------------------------------------


@pytest.mark.slow
def test_version_six_applies_once_from_two_processes_over_rows_of_version_three(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    three = tuple(m for m in migrations.available() if m.version <= 3)
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "available", lambda: three)
        with psycopg.connect(database_url) as conn:
            migrations.migrate(conn)
    with psycopg.connect(database_url) as conn:
        # Rows as version 3 stored them: one a worker stamped, one stored before namespaces.
        for namespace in ("fleet", None):
            conn.execute(
                "INSERT INTO llm_traces (trace_id, provider, model, latency_ms, tool_calls, "
                "streaming, retry_count, started_at, namespace) "
                "VALUES (gen_random_uuid(), 'p', 'm', 1, '{}', false, 0, now(), %s)",
                (namespace,),
            )
    later = tuple(f"{m.version:04d}_{m.name}" for m in migrations.available() if m.version > 3)
    assert "0006_namespace_indexes" in later

    assert migrate_from_processes(database_url) == [(), later]
    with psycopg.connect(database_url) as conn:
        assert migrations.migrate(conn).applied == ()
        assert migrations.check_schema(conn) == migrations.latest_version()
        rows = conn.execute("SELECT namespace FROM llm_traces ORDER BY 1 NULLS LAST").fetchall()
        index = conn.execute("SELECT to_regclass('llm_traces_namespace_idx')").fetchone()
    assert rows == [("fleet",), (None,)]
    assert index == ("llm_traces_namespace_idx",)
