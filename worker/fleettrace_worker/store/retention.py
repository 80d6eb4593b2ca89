"""Retention: removing rows older than a cutoff without holding long locks.

The record tables are partitioned by day (schema version 8): a partition all of whose
days are older than the cutoff is dropped whole, in one short transaction, whatever
its size. Only the partitions that may hold rows on both sides of the cutoff (the
day it falls in, the legacy partition of the rows from before version 8 until it is
old enough as a whole, and the default partition) lose their old rows in batches of
``batch_rows``, each its own short transaction that locks only the rows it deletes,
so the worker keeps writing while a prune runs and a prune stopped half-way leaves
nothing half-done. Pruning one namespace drops a partition only when it holds no row
of another namespace. See docs/storage.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, cast

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace_worker.store import database, partitions
from fleettrace_worker.store.repository import SAMPLES_TABLE, TRACES_TABLE
from fleettrace_worker.store.tree_store import PLANS_TABLE, TOOL_CALLS_TABLE

DEFAULT_BATCH_ROWS: Final = 5000
Connection = psycopg.Connection[tuple[object, ...]]
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
    #: Whole daily partitions dropped (schema 8), each counted in ``batches`` too.
    partitions_dropped: int = 0


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
    totals = _Totals()
    with database.connection(pool) as conn:
        for table, column in AGE_COLUMNS:
            if dry_run:
                totals.removed.append(_count(conn, table, column, cutoff, namespace))
                continue
            total = 0
            parts = partitions.layout(conn, table)
            conn.rollback()
            for part in parts:
                if part.older_than(cutoff):
                    dropped = _drop_whole(conn, table, part, namespace, totals)
                    if dropped is not None:
                        total += dropped
                        continue
                if part.may_hold_older(cutoff):
                    total += _delete_batches(
                        conn,
                        table,
                        part.name,
                        column,
                        cutoff,
                        batch_rows=batch_rows,
                        namespace=namespace,
                        totals=totals,
                    )
            totals.removed.append(total)
    removed = totals.removed
    return PruneReport(
        cutoff,
        removed[0],
        removed[1],
        totals.batches,
        totals.longest_s,
        dry_run,
        removed[2],
        removed[3],
        totals.dropped,
    )


@dataclass(slots=True)
class _Totals:
    removed: list[int] = field(default_factory=list)
    batches: int = 0
    longest_s: float = 0.0
    dropped: int = 0

    def timed(self, began: float) -> None:
        self.batches += 1
        self.longest_s = max(self.longest_s, time.perf_counter() - began)


def _scope(namespace: str | None) -> sql.Composable:
    return sql.SQL("") if namespace is None else sql.SQL(" AND namespace = %(namespace)s")


def _count(
    conn: Connection, table: str, column: str, cutoff: datetime, namespace: str | None
) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} < %(cutoff)s{}").format(
            sql.Identifier(table), sql.Identifier(column), _scope(namespace)
        ),
        {"cutoff": cutoff, "namespace": namespace},
    ).fetchone()
    conn.rollback()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def _drop_whole(
    conn: Connection,
    table: str,
    part: partitions.Partition,
    namespace: str | None,
    totals: _Totals,
) -> int | None:
    """Drop a partition all of whose rows are older than the cutoff, and return how
    many rows went; ``None`` (nothing done) when, pruning one namespace, it holds rows
    of another: those are deleted in batches instead.

    The parent's ACCESS EXCLUSIVE lock (which dropping a partition needs) is taken
    first, then the rows are counted and the partition dropped: writers wait for that
    count, and no row can slip in uncounted. It waits at most
    ``partitions.LOCK_TIMEOUT_MS`` for the lock (a long read would otherwise queue
    every writer behind it), and raises ``DatabaseUnavailable`` then: run it again.
    """
    name = sql.Identifier(part.name)
    others = sql.SQL("count(*) FILTER (WHERE namespace IS DISTINCT FROM %(namespace)s)")
    counting = sql.SQL("SELECT count(*), {} FROM {}").format(
        others if namespace is not None else sql.SQL("0"), name
    )
    if namespace is not None:
        # Checked first without a lock: a partition shared with other namespaces is the
        # common case of a shared database and is never locked for nothing.
        found = conn.execute(counting, {"namespace": namespace}).fetchone()
        conn.rollback()
        if found is None or int(found[1]):  # type: ignore[call-overload]
            return None
    began = time.perf_counter()
    dropped = False
    with conn.transaction():
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", (str(partitions.LOCK_TIMEOUT_MS),)
        )
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (partitions.PARTITION_LOCK_KEY,))
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table))
        )
        found = conn.execute(counting, {"namespace": namespace}).fetchone()
        rows, foreign = cast(tuple[int, int], found)
        if foreign:
            raise psycopg.Rollback()  # a row of another namespace arrived meanwhile
        conn.execute(sql.SQL("DROP TABLE {}").format(name))
        if table == "llm_traces":
            _forget_rollup(conn, part, namespace)
        dropped = True
    if not dropped:
        return None
    totals.timed(began)
    totals.dropped += 1
    return int(rows)


#: The hourly cost rollup (schema 7), kept by triggers on ``llm_traces``: a dropped
#: partition fires none, so prune takes the partition's hours off it itself.
_ROLLUP_TABLES: Final = ("llm_cost_hourly", "llm_cost_hourly_tags")


def _forget_rollup(conn: Connection, part: partitions.Partition, namespace: str | None) -> None:
    """Take a dropped ``llm_traces`` partition's rows off the hourly rollup. A partition
    holds every row of its UTC days and no other (a day's rows leave the default
    partition when its partition is made), so its hours' rollup rows are exactly its
    rows' sums; pruning one namespace drops only a partition of that namespace alone."""
    for rollup in _ROLLUP_TABLES:
        conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE (%(lower)s::timestamptz IS NULL OR hour >= %(lower)s) "
                "AND hour < %(upper)s "
                "AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)"
            ).format(sql.Identifier(rollup)),
            {"lower": part.lower, "upper": part.upper, "namespace": namespace},
        )


def _delete_batches(
    conn: Connection,
    parent: str,
    leaf: str,
    column: str,
    cutoff: datetime,
    *,
    batch_rows: int,
    namespace: str | None,
    totals: _Totals,
) -> int:
    """Delete the rows older than ``cutoff`` from one partition, ``batch_rows`` per
    short transaction.

    ``ctid = ANY(ARRAY(...))`` is a TID scan: the batch is found through the age index
    and deleted without a second pass over the table. The DELETE goes through the
    parent, limited to this partition's rows (a ctid names a row only within its own
    table) and to the age range (which prunes the other partitions), so that the
    parent's statement triggers, which keep the hourly cost rollup, see the rows. Each
    batch starts where the last one ended (the oldest age still there), so it does not
    walk again over the index entries of rows already deleted and not yet vacuumed.
    """
    statement = sql.SQL(
        "WITH gone AS (DELETE FROM {parent} WHERE tableoid = {leaf_name}::regclass "
        "AND {column} >= %(oldest)s AND {column} < %(cutoff)s AND ctid = ANY(ARRAY("
        "SELECT ctid FROM {table} WHERE {column} >= %(oldest)s AND {column} < %(cutoff)s"
        "{scope} ORDER BY {column} LIMIT %(rows)s)) RETURNING {column}) "
        "SELECT count(*), max({column}) FROM gone"
    ).format(
        parent=sql.Identifier(parent),
        table=sql.Identifier(leaf),
        leaf_name=sql.Literal(leaf),
        column=sql.Identifier(column),
        scope=_scope(namespace),
    )
    total = 0
    oldest = datetime.min.replace(tzinfo=UTC)
    while True:
        began = time.perf_counter()
        with conn.transaction():
            found = conn.execute(
                statement,
                {"oldest": oldest, "cutoff": cutoff, "rows": batch_rows, "namespace": namespace},
            ).fetchone()
        totals.timed(began)
        # An aggregate always returns its one row: (count, newest age deleted).
        deleted, newest = cast(tuple[int, datetime], found)
        total += deleted
        if deleted < batch_rows:
            return total
        oldest = newest
