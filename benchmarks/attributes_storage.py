"""What the attribute columns of schema version 4 cost a worker's COPY, measured in one
run against the machine's PostgreSQL:

- ``schema 3, no attribute columns``: today's schema before 0004, COPY of its columns;
- ``schema 4, N% of rows with attributes``: the schema with the attribute columns and
  their partial indexes, COPY of every column, most rows without attributes (NULL);
- ``schema 4 + two full GIN indexes``: the naive design (GIN on every row, NULL or
  not), the same rows, for comparison.

    python -m benchmarks.attributes_storage [--rows 100000] [--batch 1000] [--runs 3]
                                            [--with-attributes 0.05]

Rounds alternate between the schemas so that the machine's load falls on each alike;
each schema has its own fresh database, dropped afterwards. Prints one line per schema.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.storage import fresh_database, make_traces
from fleettrace.model import LLMTrace
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.repository import TRACE_COLUMNS, TRACES_TABLE, _copy, _trace_row

ATTRIBUTE_COLUMNS = ("tags", "metadata", "user_id", "session_id", "ttft_ms")
_BEFORE = tuple(c for c in TRACE_COLUMNS if c[0] not in ATTRIBUTE_COLUMNS)
_KEEP = [i for i, c in enumerate(TRACE_COLUMNS) if c[0] not in ATTRIBUTE_COLUMNS]
FULL_GIN = (
    "DROP INDEX llm_traces_tags_idx",
    "DROP INDEX llm_traces_metadata_idx",
    "CREATE INDEX llm_traces_tags_idx ON llm_traces USING gin (tags)",
    "CREATE INDEX llm_traces_metadata_idx ON llm_traces USING gin (metadata jsonb_path_ops)",
)


def with_attributes(traces: list[LLMTrace], share: float, rng: random.Random) -> list[LLMTrace]:
    """``share`` of the traces get tags, metadata, a user and a session."""
    out = []
    for i, plain in enumerate(traces):
        trace = plain
        if rng.random() < share:
            trace = plain.model_copy(
                update={
                    "tags": ["prod", rng.choice(["eu", "us"])],
                    "metadata": {"team": rng.choice(["a", "b"]), "tier": rng.randrange(3)},
                    "user_id": f"user-{i % 500}",
                    "session_id": f"session-{i % 2000}",
                    "ttft_ms": rng.random() * 500,
                }
            )
        out.append(trace)
    return out


def migrate_to(url: str, version: int, extra: Sequence[str] = ()) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(migrations.VERSION_TABLE))
        )
        for migration in migrations.available()[:version]:
            conn.execute(migration.sql.encode())
        for statement in extra:
            conn.execute(statement.encode())


def copier(url: str, columns: tuple[tuple[str, str], ...]) -> Callable[[list[Any]], None]:
    pool = database.create_pool(url, min_size=1, max_size=1)

    def store(rows: list[Any]) -> None:
        with database.connection(pool) as conn, conn.transaction():
            _copy(conn, TRACES_TABLE, columns, rows)

    store.pool = pool  # type: ignore[attr-defined]
    return store


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--with-attributes", type=float, default=0.05)
    args = parser.parse_args(argv)
    rng = random.Random(4)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    share = args.with_attributes
    # Rows are made before the clock starts: COPY is what is measured. Each round of
    # each schema writes its own trace ids.
    rounds = [
        [_trace_row(t) for t in with_attributes(make_traces(args.rows, rng, start), share, rng)]
        for _ in range(args.runs * 3)
    ]
    schemas = (
        ("schema 3, no attribute columns", 3, (), _BEFORE),
        (f"schema 4, {share:.0%} of rows with attributes, partial indexes", 4, (), TRACE_COLUMNS),
        (
            f"schema 4, {share:.0%} with attributes, two full GIN indexes",
            4,
            FULL_GIN,
            TRACE_COLUMNS,
        ),
    )
    rates: dict[str, list[float]] = {label: [] for label, *_ in schemas}
    with fresh_database() as u3, fresh_database() as u4, fresh_database() as ugin:
        stores = []
        for (label, version, extra, columns), url in zip(schemas, (u3, u4, ugin), strict=True):
            migrate_to(url, version, extra)
            stores.append((label, columns, copier(url, columns)))
        try:
            for run in range(args.runs):
                for index, (label, columns, store) in enumerate(stores):
                    rows = rounds[run * 3 + index]
                    if columns is _BEFORE:
                        rows = [tuple(row[i] for i in _KEEP) for row in rows]
                    began = time.perf_counter()
                    for i in range(0, len(rows), args.batch):
                        store(rows[i : i + args.batch])
                    rates[label].append(len(rows) / (time.perf_counter() - began))
        finally:
            for _, _, store in stores:
                store.pool.close()  # type: ignore[attr-defined]
    for label, found in rates.items():
        print(
            f"{label:<64} median {statistics.median(found):>7,.0f} rows/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in found)}; load {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()
