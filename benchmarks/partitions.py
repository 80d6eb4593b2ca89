"""Figures for docs/storage.md on the daily partitions (schema version 8):

1. the migration from schema 6 over a table holding rows: how long it holds its lock,
   seen by a writer storing batches of 100 rows throughout (the longest store during
   the migration against the median store outside it);
2. prune on partitioned tables: whole days dropped, the boundary day deleted in
   batches;
3. store() into schema 6 beside schema 8, batches interleaved.

    python -m benchmarks.partitions [--rows 200000] [--prune-rows 200000] [--store-rows 50000]

Each run makes its own database on the machine's PostgreSQL and drops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from benchmarks.storage import fresh_database, interleaved, make_traces
from fleettrace.model import LLMTrace
from fleettrace_worker.store import database, migrations, partitions, retention
from fleettrace_worker.store.repository import LLMTraceRepository

#: Rows made by the server itself (no client cost): 30 days back from now.
_FILL = """
INSERT INTO llm_traces (trace_id, plan_id, provider, model, prompt_tokens, completion_tokens,
    cost_usd, latency_ms, tool_calls, streaming, retry_count, started_at, namespace)
SELECT gen_random_uuid(), 'plan-' || (g % 1000), 'openai', 'gpt-4o', 100, 20, 0.001,
    12.5, '{{}}', false, 0, now() - make_interval(secs => g::float8 * {spread} / {rows}), 'bench'
FROM generate_series(1, {rows}) g
"""


def at_version_six(url: str, rows: int, days: int) -> None:
    with psycopg.connect(url) as conn:
        table = sql.Identifier(migrations.VERSION_TABLE)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(table)
        )
        for migration in migrations.available():
            if migration.version <= 6:
                conn.execute(migration.sql.encode())
                conn.execute(
                    sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(table),
                    (migration.version, migration.name),
                )
        conn.execute(_FILL.format(rows=rows, spread=days * 86400).encode())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE llm_traces")


def bench_migration(rows: int, *, prebuild: bool = True) -> None:
    with fresh_database() as url:
        began = time.perf_counter()
        at_version_six(url, rows, days=30)
        print(
            f"schema 6 with {rows:,} rows over 30 days made in {time.perf_counter() - began:.1f} s"
        )
        stores: list[tuple[float, float]] = []
        stop = threading.Event()
        with database.create_pool(url, min_size=1, max_size=2, lock_timeout_ms=30_000) as pool:
            repo = LLMTraceRepository(pool)

            def writer() -> None:
                while not stop.is_set():
                    batch = [LLMTrace(provider="openai", model="gpt-4o") for _ in range(100)]
                    t0 = time.perf_counter()
                    repo.store(batch, namespace="bench")
                    stores.append((t0, time.perf_counter()))

            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(2.0)
            with psycopg.connect(url) as conn:
                # What migrate() does, timed step by step: the keys built concurrently
                # (prebuild), the migration's transaction, the partitions made ahead.
                p0 = time.perf_counter()
                with migrations._turn(conn, prebuild=prebuild):
                    m0 = time.perf_counter()
                    result = migrations._apply(conn)
                    m1 = time.perf_counter()
                made = partitions.ensure(conn)
                m2 = time.perf_counter()
            time.sleep(2.0)
            stop.set()
            thread.join()
        assert result.applied == ("0008_daily_partitions",), result
        building = [end - start for start, end in stores if end > p0 and start < m0]
        during = [end - start for start, end in stores if end > m0 and start < m1]
        outside = [end - start for start, end in stores if end < p0 or start > m2]
        how = "keys built first, concurrently" if prebuild else "keys built in the transaction"
        print(
            f"migration to schema 8 over {rows:,} rows ({how}): keys {m0 - p0:.2f} s, "
            f"its transaction {m1 - m0:.2f} s; then {len(made)} daily partitions made in "
            f"{m2 - m1:.2f} s"
        )
        print(
            "  a writer storing batches of 100 rows: median "
            f"{statistics.median(outside) * 1000:.1f} ms outside ({len(outside)} stores); "
            "longest while the keys were built "
            f"{max(building, default=0) * 1000:.0f} ms ({len(building)}); longest during the "
            f"transaction {max(during, default=0) * 1000:.0f} ms ({len(during)}) "
            f"(load {os.getloadavg()[0]:.1f})"
        )


def bench_store_ab(rows: int) -> None:
    """store() into schema 6 (one table) and schema 8 (daily partitions), batches
    alternating between the two: new rows, then batches half new, half stored."""
    rng = random.Random(7)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    batches = rows // 1000
    new = [make_traces(1000, rng, start + timedelta(seconds=i)) for i in range(batches)]
    halves = [
        new[i][:500] + make_traces(500, rng, start + timedelta(seconds=i)) for i in range(batches)
    ]
    with fresh_database() as url_a, fresh_database() as url_b:
        at_version_six(url_a, 0, days=1)
        with psycopg.connect(url_b) as conn:
            migrations.migrate(conn)
        with (
            database.create_pool(url_a, min_size=1, max_size=1) as pool_a,
            database.create_pool(url_b, min_size=1, max_size=1) as pool_b,
        ):
            repo_a, repo_b = LLMTraceRepository(pool_a), LLMTraceRepository(pool_b)
            one, eight = (
                "store() new traces, schema 6 (one table)",
                "store() new traces, schema 8 (daily partitions)",
            )
            interleaved(
                one, lambda i: repo_a.store(new[i]), eight, lambda i: repo_b.store(new[i]),
                batches=batches, rows_per_batch=1000,
            )  # fmt: skip
            interleaved(
                "store() half new, half stored, schema 6",
                lambda i: repo_a.store(halves[i]),
                "store() half new, half stored, schema 8",
                lambda i: repo_b.store(halves[i]),
                batches=batches,
                rows_per_batch=1000,
            )


def bench_prune(rows: int) -> None:
    with fresh_database() as url:
        with psycopg.connect(url) as conn:
            migrations.migrate(conn)
            today = datetime.now(UTC).date()
            for back in range(0, 10):
                partitions.ensure(conn, days_ahead=0, today=today - timedelta(days=back))
            conn.execute(_FILL.format(rows=rows, spread=10 * 86400).encode())
            conn.commit()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE llm_traces")
        cutoff = datetime.now(UTC) - timedelta(days=5, hours=12)
        with database.create_pool(url, min_size=1, max_size=1) as pool:
            began = time.perf_counter()
            report = retention.prune(pool, cutoff, namespace=None)
            took = time.perf_counter() - began
        print(
            f"prune of {report.traces:,} of {rows:,} rows over 10 days (cutoff 5.5 days ago): "
            f"{took:.2f} s, {report.partitions_dropped} partitions dropped whole (4 tables), "
            f"{report.batches - report.partitions_dropped} batched deletes, longest step "
            f"{report.longest_batch_s * 1000:.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--prune-rows", type=int, default=200_000)
    parser.add_argument("--store-rows", type=int, default=50_000, help="rows of the store() A/B")
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()[0]:.1f}")
    if args.rows:
        bench_migration(args.rows, prebuild=False)
        bench_migration(args.rows, prebuild=True)
    if args.prune_rows:
        bench_prune(args.prune_rows)
    if args.store_rows:
        bench_store_ab(args.store_rows)


if __name__ == "__main__":
    main()
