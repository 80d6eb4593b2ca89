"""Erasure: removing every stored row of one user or one session.

:data:`PERSON_COLUMNS` lists, for each table that stores rows of a person, the
columns that name the user and the session; a table that gains them is added there,
and ``fleettrace erase`` covers it. Metric samples name no person (their labels are
the metric table's: plan, actor, model...), so they have nothing to erase.

Rows go in batches, each its own short transaction found through the partial index
on the column (schema version 4), partition by partition (schema version 8), so
workers keep writing while an erasure runs; an erasure stopped half-way is finished
by running it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace_worker.store import database, partitions
from fleettrace_worker.store.repository import TRACES_TABLE

DEFAULT_BATCH_ROWS: Final = 5000
Who = Literal["user", "session"]
#: Each table holding rows of a person, with its user and session columns.
PERSON_COLUMNS: Final[dict[str, dict[Who, str]]] = {
    TRACES_TABLE: {"user": "user_id", "session": "session_id"},
}


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """Rows removed (or, on a dry run, that would be) from each table."""

    who: Who
    value: str
    removed: dict[str, int]
    dry_run: bool

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def erase(
    pool: ConnectionPool,
    who: Who,
    value: str,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    dry_run: bool = False,
) -> ErasureReport:
    """Remove the rows of user (or session) ``value`` from every table in
    :data:`PERSON_COLUMNS`."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    removed: dict[str, int] = {}
    with database.connection(pool) as conn:
        for table, columns in PERSON_COLUMNS.items():
            names = {"table": sql.Identifier(table), "column": sql.Identifier(columns[who])}
            if dry_run:
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM {table} WHERE {column} = %s").format(**names),
                    (value,),
                ).fetchone()
                conn.rollback()
                removed[table] = int(row[0]) if row else 0  # type: ignore[call-overload]
                continue
            # A ctid names a row within one table only: each partition (schema 8)
            # is erased on its own, through its own partial index.
            leaves = [p.name for p in partitions.layout(conn, table)] or [table]
            conn.rollback()
            total = 0
            for leaf in leaves:
                total += _erase_from(conn, table, leaf, columns[who], value, batch_rows=batch_rows)
            removed[table] = total
    return ErasureReport(who, value, removed, dry_run)


def _erase_from(
    conn: psycopg.Connection[tuple[object, ...]],
    parent: str,
    table: str,
    column: str,
    value: str,
    *,
    batch_rows: int,
) -> int:
    """Delete the rows of ``value`` from one table (a partition), ``batch_rows`` per
    short transaction. Through the parent (the rows of that partition alone: a ctid
    names a row within one table only), so that the parent's statement triggers, which
    keep the hourly cost rollup, see them."""
    statement = sql.SQL(
        "DELETE FROM {parent} WHERE tableoid = {leaf_name}::regclass AND ctid = ANY(ARRAY("
        "SELECT ctid FROM {leaf} WHERE {column} = %s LIMIT %s))"
    ).format(
        parent=sql.Identifier(parent),
        leaf=sql.Identifier(table),
        leaf_name=sql.Literal(table),
        column=sql.Identifier(column),
    )
    total = 0
    while True:
        with conn.transaction():
            deleted = conn.execute(statement, (value, batch_rows)).rowcount
        total += deleted
        if deleted < batch_rows:
            return total
