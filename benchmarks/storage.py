"""Figures for docs/storage.md: how fast ``LLMTraceRepository.store`` writes, and how
retention by batched deletes behaves, on a fresh database of the machine's PostgreSQL.

    python -m benchmarks.storage [--rows 200000] [--batch 1000] [--prune-rows 500000]
                                 [--index-rows 200000] [--partition-rows 400000]

Prints one line per figure. Each run makes its own database and drops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg

from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace, MetricSample
from fleettrace_worker.store import database, migrations, retention
from fleettrace_worker.store.repository import LLMTraceRepository

ADMIN_URL = os.environ.get(
    "FLEETTRACE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"fleettrace_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_traces(n: int, rng: random.Random, start: datetime) -> list[LLMTrace]:
    hashes = [f"{rng.getrandbits(256):064x}" for _ in range(32)]
    return [
        LLMTrace(
            trace_id=uuid.UUID(int=rng.getrandbits(128), version=4),
            plan_id=f"plan-{rng.randrange(1000)}",
            decision_id=f"d-{i}",
            actor=rng.choice(["planner", "coder", "reviewer"]),
            provider="openai",
            model=rng.choice(["gpt-4o", "gpt-4o-mini"]),
            prompt_tokens=rng.randrange(100, 4000),
            completion_tokens=rng.randrange(10, 800),
            cost_usd=rng.random() / 100,
            latency_ms=rng.random() * 2000,
            tool_calls=rng.sample(["search", "read", "write", "run"], k=rng.randrange(0, 3)),
            context_hash=rng.choice(hashes),
            streaming=rng.random() < 0.5,
            retry_count=0,
            error=None if rng.random() < 0.95 else "Timeout: upstream",
            started_at=start + timedelta(microseconds=i * 1000),
        )
        for i in range(n)
    ]


def timed(label: str, rows: int, runs: int, action: Callable[[int], None]) -> None:
    """Rows per second of wall time, and this process's CPU per row: on a shared, busy
    machine the second moves far less than the first."""
    rates = []
    cpu_us = []
    for run in range(runs):
        began, began_cpu = time.perf_counter(), time.process_time()
        action(run)
        rates.append(rows / (time.perf_counter() - began))
        cpu_us.append((time.process_time() - began_cpu) / rows * 1e6)
    print(
        f"{label:<64} median {statistics.median(rates):>7,.0f} rows/s, "
        f"client CPU {statistics.median(cpu_us):.1f} us/row "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}; load {os.getloadavg()[0]:.1f})"
    )


FILTER_INDEXES = (
    "CREATE INDEX ON llm_traces (provider, model, started_at)",
    "CREATE INDEX ON llm_traces (actor, started_at) WHERE actor IS NOT NULL",
)


def bench_store(rows: int, batch: int, runs: int) -> None:
    rng = random.Random(1)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # Every record is made before the clock starts: store() is what is measured.
    data = [make_traces(rows, rng, start) for _ in range(runs)]
    fresh_halves = [make_traces(rows // 2, random.Random(100 + run), start) for run in range(runs)]
    more = [make_traces(rows, random.Random(200 + run), start) for run in range(runs)]
    samples_per_batch = batch // 10
    sample = MetricSample(
        key=MetricKey.LLM_RETRIES_COUNT,
        labels={"provider": "openai", "model": "gpt-4o"},
        value=1.0,
        observed_at=start,
    )
    with fresh_database() as url, database.create_pool(url, min_size=1, max_size=1) as pool:
        migrations.migrate(pool)
        repo = LLMTraceRepository(pool)

        def new_rows(run: int) -> None:
            traces = data[run]
            for i in range(0, rows, batch):
                repo.store(traces[i : i + batch])

        def redelivered(run: int) -> None:
            traces = data[run]
            for i in range(0, rows, batch):
                result = repo.store(traces[i : i + batch])
                assert result.traces_inserted == 0

        def half_new(run: int) -> None:
            traces = fresh_halves[run]
            old = data[run]
            for i in range(0, rows // 2, batch // 2):
                repo.store([*traces[i : i + batch // 2], *old[i : i + batch // 2]])

        timed(f"store() new traces, batches of {batch}", rows, runs, new_rows)
        timed(
            f"store() redelivered traces (all duplicates), batches of {batch}",
            rows,
            runs,
            redelivered,
        )
        timed(f"store() half new, half duplicates, batches of {batch}", rows, runs, half_new)

        def with_samples(run: int) -> None:
            traces = more[run]
            for i in range(0, rows, batch):
                batch_id = uuid.uuid4().hex
                samples = [(batch_id, p, sample) for p in range(samples_per_batch)]
                repo.store(traces[i : i + batch], samples)

        timed(
            f"store() {batch} traces + {samples_per_batch} metric samples per call (all rows)",
            rows + rows // batch * samples_per_batch,
            runs,
            with_samples,
        )


def bench_prune(rows: int, batch_rows: int) -> None:
    rng = random.Random(2)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with fresh_database() as url, database.create_pool(url, min_size=1, max_size=2) as pool:
        migrations.migrate(pool)
        repo = LLMTraceRepository(pool)
        traces = make_traces(rows, rng, start)
        for i in range(0, rows, 5000):
            repo.store(traces[i : i + 5000])
        cutoff = traces[rows // 2].started_at
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE llm_traces")
        began = time.perf_counter()
        report = retention.prune(pool, cutoff, batch_rows=batch_rows)
        took = time.perf_counter() - began
        longest_ms = report.longest_batch_s * 1000
        print(
            f"prune: {report.traces:,} of {rows:,} rows in batches of {batch_rows}: "
            f"{took:.2f} s, {report.traces / took:,.0f} rows/s, longest batch {longest_ms:.0f} ms"
        )


PARTITIONED_DDL = """
CREATE TABLE llm_traces_by_day (LIKE llm_traces INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (trace_id, started_at)) PARTITION BY RANGE (started_at);
CREATE INDEX ON llm_traces_by_day (started_at, trace_id);
CREATE INDEX ON llm_traces_by_day (plan_id, started_at, trace_id) WHERE plan_id IS NOT NULL;
CREATE INDEX ON llm_traces_by_day (started_at, trace_id) WHERE error IS NOT NULL;
"""


def interleaved(
    label_a: str,
    write_a: Callable[[int], None],
    label_b: str,
    write_b: Callable[[int], None],
    *,
    batches: int,
    rows_per_batch: int,
) -> None:
    """A/B on a busy machine: batches alternate between the two sides, so whatever else
    runs meanwhile slows both alike and the ratio stays meaningful."""
    spent = {label_a: 0.0, label_b: 0.0}
    for i in range(batches):
        order = [(label_a, write_a), (label_b, write_b)]
        for label, write in order if i % 2 == 0 else reversed(order):
            began = time.perf_counter()
            write(i)
            spent[label] += time.perf_counter() - began
    rates = {label: batches * rows_per_batch / took for label, took in spent.items()}
    for label, rate in rates.items():
        print(f"{label:<76} {rate:>9,.0f} rows/s")
    print(f"{'ratio':<76} {rates[label_b] / rates[label_a]:>9.2f}")


def bench_indexes(rows: int, batch: int) -> None:
    """What the indexes deliberately left out of the schema would cost store()."""
    traces = make_traces(rows, random.Random(4), datetime(2026, 1, 1, tzinfo=UTC))
    with (
        fresh_database() as url_a,
        fresh_database() as url_b,
        database.create_pool(url_a, min_size=1, max_size=1) as pool_a,
        database.create_pool(url_b, min_size=1, max_size=1) as pool_b,
    ):
        migrations.migrate(pool_a)
        migrations.migrate(pool_b)
        with database.connection(pool_b) as conn:
            for statement in FILTER_INDEXES:
                conn.execute(statement)
        repo_a, repo_b = LLMTraceRepository(pool_a), LLMTraceRepository(pool_b)
        interleaved(
            "store(), the schema's indexes",
            lambda i: repo_a.store(traces[i * batch : (i + 1) * batch]),
            "store(), plus (provider, model, started_at), (actor, started_at)",
            lambda i: repo_b.store(traces[i * batch : (i + 1) * batch]),
            batches=rows // batch,
            rows_per_batch=batch,
        )


PARTITIONED_DDL = """
CREATE TABLE llm_traces_by_day (LIKE llm_traces INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (trace_id, started_at)) PARTITION BY RANGE (started_at);
CREATE INDEX ON llm_traces_by_day (started_at, trace_id);
CREATE INDEX ON llm_traces_by_day (plan_id, started_at, trace_id) WHERE plan_id IS NOT NULL;
CREATE INDEX ON llm_traces_by_day (started_at, trace_id) WHERE error IS NOT NULL;
"""


def bench_partitions(rows: int, batch: int) -> None:
    """The alternative not chosen: daily range partitions. Insert rate through the
    partitioned parent against the plain table, and dropping a day against deleting it
    in batches."""
    from fleettrace_worker.store.repository import TRACE_COLUMNS, _copy, _trace_row

    rng = random.Random(3)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # Spread over 4 days so that each day is a partition of rows // 4.
    traces = [
        t.model_copy(update={"started_at": start + timedelta(days=4 * i / rows)})
        for i, t in enumerate(make_traces(rows, rng, start))
    ]
    prepared = [_trace_row(t) for t in traces]
    with fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn)
        conn.execute(PARTITIONED_DDL.encode())
        for day in range(4):
            low, high = start + timedelta(days=day), start + timedelta(days=day + 1)
            conn.execute(
                f"CREATE TABLE llm_traces_d{day} PARTITION OF llm_traces_by_day "
                f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
            )

        def write(table: str) -> Callable[[int], None]:
            def run(i: int) -> None:
                with conn.transaction():
                    _copy(conn, table, TRACE_COLUMNS, prepared[i * batch : (i + 1) * batch])

            return run

        interleaved(
            f"binary COPY into llm_traces, batches of {batch}",
            write("llm_traces"),
            f"binary COPY into llm_traces_by_day (daily partitions), batches of {batch}",
            write("llm_traces_by_day"),
            batches=rows // batch,
            rows_per_batch=batch,
        )
        conn.execute("VACUUM ANALYZE llm_traces")
        began = time.perf_counter()
        conn.execute("ALTER TABLE llm_traces_by_day DETACH PARTITION llm_traces_d0")
        conn.execute("DROP TABLE llm_traces_d0")
        dropped_s = time.perf_counter() - began
        with database.create_pool(url, min_size=1, max_size=1) as pool:
            began = time.perf_counter()
            report = retention.prune(pool, start + timedelta(days=1))
            deleted_s = time.perf_counter() - began
        print(
            f"one day of {rows // 4:,} rows: DETACH + DROP PARTITION {dropped_s * 1000:.0f} ms; "
            f"batched DELETE {report.traces:,} rows {deleted_s * 1000:.0f} ms "
            f"(longest batch {report.longest_batch_s * 1000:.0f} ms)"
        )


def main() -> None:
    # A terminated run still drops its database (the finally of fresh_database).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prune-rows", type=int, default=500_000)
    parser.add_argument("--prune-batch", type=int, default=5000)
    parser.add_argument("--partition-rows", type=int, default=400_000)
    parser.add_argument(
        "--index-rows",
        type=int,
        default=200_000,
        help="rows for the A/B of the indexes the schema leaves out (0: skip)",
    )
    args = parser.parse_args()
    if args.rows:
        bench_store(args.rows, args.batch, args.runs)
    if args.index_rows:
        bench_indexes(args.index_rows, args.batch)
    if args.prune_rows:
        bench_prune(args.prune_rows, args.prune_batch)
    if args.partition_rows:
        bench_partitions(args.partition_rows, args.batch)


if __name__ == "__main__":
    main()
