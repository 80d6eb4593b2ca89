"""Retention: removing rows older than a cutoff without holding long locks.

Rows go in batches of ``batch_rows``, each its own short transaction that locks only
the rows it deletes, so the worker keeps writing while a prune runs and a prune
stopped half-way leaves nothing half-done. Why batched deletes rather than time
partitions: docs/storage.md (a partitioned table cannot keep ``trace_id`` alone
unique, and idempotent writes depend on that).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, cast

from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace_worker.store import database
from fleettrace_worker.store.repository import SAMPLES_TABLE, TRACES_TABLE
from fleettrace_worker.store.tree_store import PLANS_TABLE, TOOL_CALLS_TABLE

DEFAULT_BATCH_ROWS: Final = 5000
#: Each table with the column that says how old a row is (when it happened, not when
#: it was stored, so a backlog drained late is kept as long as its neighbours).
AGE_COLUMNS: Final = (
    (TRACES_TABLE, "started_at"),
    (SAMPLES_TABLE, "observed_at"),
    (TOOL_CALLS_TABLE, "started_at"),
    (PLANS_TABLE, "started_at"),
)


@dataclass(frozen=True, slots=True)
class PruneReport:
    """Rows removed (or, on a dry run, that would be) from each table."""

    cutoff: datetime
    traces: int
    samples: int
    batches: int
    longest_batch_s: float
    dry_run: bool
    #: The plan tree's tables (schema 5).
    tool_calls: int = 0
    plans: int = 0


def prune(
    pool: ConnectionPool,
    cutoff: datetime,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    dry_run: bool = False,
    namespace: str | None = None,
) -> PruneReport:
    """Remove traces that started and samples observed before ``cutoff``: those stored
    under ``namespace``, or in every namespace when it is None (rows stored before
    schema version 3, which have none, included)."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    removed: list[int] = []
    batches = 0
    longest_s = 0.0
    # One namespace: its traces are found through (namespace, started_at); its samples
    # through the observed_at index, each batch walking on from where the last ended.
    scope = sql.SQL("") if namespace is None else sql.SQL(" AND namespace = %(namespace)s")
    with database.connection(pool) as conn:
        for table, column in AGE_COLUMNS:
            if dry_run:
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE {} < %(cutoff)s{}").format(
                        sql.Identifier(table), sql.Identifier(column), scope
                    ),
                    {"cutoff": cutoff, "namespace": namespace},
                ).fetchone()
                conn.rollback()
                removed.append(int(row[0]) if row else 0)  # type: ignore[call-overload]
                continue
            # ctid = ANY(ARRAY(...)) is a TID scan: the batch is found through the age
            # index and deleted without a second pass over the table. Each batch starts
            # where the last one ended (the oldest age still there), so it does not walk
            # again over the index entries of rows already deleted and not yet vacuumed.
            statement = sql.SQL(
                "WITH gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                "SELECT ctid FROM {table} WHERE {column} >= %(oldest)s AND {column} < %(cutoff)s"
                "{scope} ORDER BY {column} LIMIT %(rows)s)) RETURNING {column}) "
                "SELECT count(*), max({column}) FROM gone"
            ).format(table=sql.Identifier(table), column=sql.Identifier(column), scope=scope)
            total = 0
            oldest = datetime.min.replace(tzinfo=UTC)
            while True:
                began = time.perf_counter()
                with conn.transaction():
                    found = conn.execute(
                        statement,
                        {
                            "oldest": oldest,
                            "cutoff": cutoff,
                            "rows": batch_rows,
                            "namespace": namespace,
                        },
                    ).fetchone()
                longest_s = max(longest_s, time.perf_counter() - began)
                batches += 1
                # An aggregate always returns its one row: (count, newest age deleted).
                deleted, newest = cast(tuple[int, datetime], found)
                total += deleted
                if deleted < batch_rows:
                    break
                oldest = newest
            removed.append(total)
    return PruneReport(
        cutoff, removed[0], removed[1], batches, longest_s, dry_run, removed[2], removed[3]
    )
