"""The daily partitions of the record tables (schema version 8): what exists, and
making the coming days' partitions ahead of time.

Each record table is RANGE-partitioned on the time its rows happened, one partition
per UTC day named ``<table>_pYYYYMMDD``, beside ``<table>_legacy`` (the rows stored
before version 8, everything up to its upper bound) and ``<table>_default`` (a row no
other partition covers: it is never refused for its date). :func:`ensure` creates the
partitions of yesterday to ``days_ahead`` days on; ``fleettrace migrate`` runs it, and
so does the worker every ``PARTITION_INTERVAL_S``. When it creates a day's partition
it moves that day's rows out of the default partition in the same transaction (the
default partition must hold no row of a range being created), so rows that arrived
before their day's partition existed end up where they belong.

Creating a partition takes an ACCESS EXCLUSIVE lock on the parent for a moment. A
request for it queued behind a long read would hold up every writer queued after it,
so each creation runs with a short ``lock_timeout`` (:data:`LOCK_TIMEOUT_MS`) and
is simply tried again at the next round when it times out.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace.errors import FleettraceError
from fleettrace_worker.store import database
from fleettrace_worker.store.settings import partition_days_ahead

log = logging.getLogger(__name__)

#: Each partitioned table with the column it is partitioned on (the time the row's
#: thing happened, which retention also goes by).
PARTITIONED: Final = (
    ("llm_traces", "started_at"),
    ("metric_samples", "observed_at"),
    ("tool_calls", "started_at"),
    ("plans", "started_at"),
)
#: How often the worker makes the coming days' partitions.
PARTITION_INTERVAL_S: Final = 3600.0
#: How long a partition's creation waits for its lock before trying again next round.
LOCK_TIMEOUT_MS: Final = 2000
#: Advisory lock serialising partition changes (creation here, dropping in retention):
#: the bytes of "ftpartit".
PARTITION_LOCK_KEY: Final = 0x6674706172746974
DAY: Final = timedelta(hours=24)
#: The primary key columns schema 8 gives each table (its id, then its time).
NEW_KEYS: Final = (
    ("llm_traces", "trace_id, started_at"),
    ("metric_samples", "batch_id, position, observed_at"),
    ("tool_calls", "call_id, started_at"),
    ("plans", "record_id, started_at"),
)
#: Name suffix of those keys built ahead of the migration (0008 looks for it).
PREBUILT_SUFFIX: Final = "_key_v8"
#: How far the clock that made a time-ordered id may be from the one that timed the call.
ID_CLOCK_MARGIN: Final = timedelta(hours=1)

Connection = psycopg.Connection[tuple[object, ...]]


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition: ``lower``/``upper`` are its bounds (``None``: unbounded, as the
    legacy partition's lower bound); ``default`` for the default partition."""

    name: str
    lower: datetime | None
    upper: datetime | None
    default: bool = False

    def older_than(self, cutoff: datetime) -> bool:
        """Every row it can hold is older than ``cutoff``."""
        return not self.default and self.upper is not None and self.upper <= cutoff

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """It covers some of ``[start, end)`` (the default partition covers nothing)."""
        if self.default:
            return False
        return (self.lower is None or self.lower < end) and (
            self.upper is None or self.upper > start
        )

    def may_hold_older(self, cutoff: datetime) -> bool:
        """It can hold a row older than ``cutoff``."""
        return self.default or self.lower is None or self.lower < cutoff


def id_window(record_id: uuid.UUID) -> tuple[datetime, datetime] | None:
    """The times a record with this id can have started, when the id is time-ordered
    (UUIDv7: its first 48 bits are the Unix time in milliseconds at which it was
    made); ``None`` for any other id, which says nothing about its day.

    The id is made while the call runs, so the call started at most a day (the
    longest latency a record may carry) before it; an hour either side allows for
    clocks that disagree. A lookup bounded by this window reads only the partitions
    of those days; one that finds nothing there tries every partition (an id made
    by other means may name any time).
    """
    if record_id.version != 7:
        return None
    millis = record_id.int >> 80
    try:
        made = datetime.fromtimestamp(millis / 1000, UTC)
        return made - DAY - ID_CLOCK_MARGIN, made + ID_CLOCK_MARGIN
    except (OverflowError, ValueError, OSError):
        return None


def prebuild_keys(conn: Connection) -> None:
    """Build the primary keys schema 8 gives the record tables, ``(id, time)``, on the
    tables not yet partitioned, with ``CREATE UNIQUE INDEX CONCURRENTLY`` (writers go
    on meanwhile), so that the migration's transaction adopts them instead of building
    them under its lock.

    ``conn`` must be in autocommit (``CONCURRENTLY`` cannot run in a transaction);
    ``migrations.migrate`` calls it holding its session-level advisory lock, so a
    second migrating process waits without a snapshot the build would wait for. A
    build that failed (an invalid index) is dropped and made again.
    """
    for table, key in NEW_KEYS:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        if not (exists and exists[0]) or is_partitioned(conn, table):
            continue
        index = sql.Identifier(f"{table}{PREBUILT_SUFFIX}")
        # One a failed build left behind is not valid: build it again.
        invalid = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(%s) "
            "AND NOT indisvalid)",
            (f"{table}{PREBUILT_SUFFIX}",),
        ).fetchone()
        if invalid and invalid[0]:
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY {}").format(index))
        conn.execute(
            sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
                index, sql.Identifier(table), sql.SQL(key)
            )
        )


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def layout(conn: Connection, table: str) -> list[Partition]:
    """The partitions of ``table``, oldest first, the default partition last. Bounds
    are read back in the same session that formats them, so the time zone of the
    session cannot shift them."""
    rows = conn.execute(
        r"""
        SELECT c.relname, b.expr = 'DEFAULT',
               nullif(substring(b.expr FROM 'FROM \(''?([^'')]*)''?\)'), 'MINVALUE')::timestamptz,
               nullif(substring(b.expr FROM 'TO \(''?([^'')]*)''?\)'), 'MAXVALUE')::timestamptz
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b
        WHERE i.inhparent = to_regclass(%s)
        """,
        (table,),
    ).fetchall()
    found = [
        Partition(str(name), lower, upper, bool(default))  # type: ignore[arg-type]
        for name, default, lower, upper in rows
    ]
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(found, key=lambda p: (p.default, p.lower or epoch))


def is_partitioned(conn: Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s))",
        (table,),
    ).fetchone()
    return bool(row and row[0])


def ensure(
    conn: Connection, *, days_ahead: int | None = None, today: date | None = None
) -> list[str]:
    """Create the partitions from yesterday to ``days_ahead`` days after ``today``
    (default: ``$FLEETTRACE_PARTITION_DAYS_AHEAD``, else 7: a worker down for a week
    still finds its days made) that
    no partition covers yet, one short transaction per table; returns their names.

    A day overlapping an existing partition (the legacy one, reaching up to the day
    after its newest row) is left to it. Raises what PostgreSQL raised when a lock was
    not granted in time; the tables done before stay done.
    """
    today = today or datetime.now(UTC).date()
    if days_ahead is None:
        days_ahead = partition_days_ahead()
    days = [today + timedelta(days=offset) for offset in range(-1, days_ahead + 1)]
    created: list[str] = []
    for table, column in PARTITIONED:
        with conn.transaction():
            if not is_partitioned(conn, table):
                continue
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (str(LOCK_TIMEOUT_MS),))
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_KEY,))
            existing = layout(conn, table)
            for day in days:
                start = day_start(day)
                if not any(part.overlaps(start, start + DAY) for part in existing):
                    _create_day(conn, table, column, day)
                    created.append(partition_name(table, day))
    return created


def _create_day(conn: Connection, table: str, column: str, day: date) -> None:
    """Create ``day``'s partition, moving the default partition's rows of that day into
    it (PostgreSQL refuses to create a partition whose rows sit in the default one)."""
    start = day_start(day)
    values = {"start": start, "end": start + DAY}
    default = sql.Identifier(f"{table}_default")
    col = sql.Identifier(column)
    waiting = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {col} >= %(start)s AND {col} < %(end)s)"
        ).format(default, col=col),
        values,
    ).fetchone()
    moving = sql.Identifier(f"fleettrace_moving_{table}")
    moved = 0
    if waiting and waiting[0]:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(moving))
        conn.execute(
            sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DROP").format(
                moving, sql.Identifier(table)
            )
        )
        moved = conn.execute(
            sql.SQL(
                "WITH gone AS (DELETE FROM {default} WHERE {col} >= %(start)s AND {col} < %(end)s "
                "RETURNING *) INSERT INTO {moving} SELECT * FROM gone"
            ).format(default=default, col=col, moving=moving),
            values,
        ).rowcount
    # Partition bounds are literals (no parameters in DDL).
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(partition_name(table, day)),
            sql.Identifier(table),
            sql.Literal(values["start"].isoformat()),
            sql.Literal(values["end"].isoformat()),
        )
    )
    if moved:
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM {}").format(sql.Identifier(table), moving)
        )
        log.info("moved %d rows of %s from %s_default into its partition", moved, day, table)


def ensure_quietly(pool: ConnectionPool, *, days_ahead: int | None = None) -> list[str]:
    """:func:`ensure` for the worker's housekeeping: a lock not granted in time or an
    unavailable server is logged and left to the next round (rows meanwhile go to the
    default partition, never refused)."""
    try:
        with database.connection(pool) as conn:
            return ensure(conn, days_ahead=days_ahead)
    except (psycopg.Error, FleettraceError) as error:
        log.warning("daily partitions not created this round: %s", error)
        return []
