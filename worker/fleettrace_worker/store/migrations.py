"""Versioned schema changes, and the check that the worker runs on a schema it knows.

Each ``migrations/NNNN_name.sql`` file is one version; they apply in order, each
recorded in ``fleettrace_schema_version``. The numbers may leave gaps (work on several
branches takes numbers ahead of time): every shipped version the database has not
recorded is applied, a gap filled later included, so what decides is the set of versions
recorded, not the highest one. :func:`migrate` takes a transaction-level
advisory lock first, so two hosts migrating at once apply every file exactly once
(the second waits, then finds nothing left to do), and a failing file leaves the
database at the version it had.

Versions are applied by set, not by count: a database is up to date when every
shipped version is recorded, and :func:`migrate` applies the ones it lacks, in order.
So the numbers may have a gap (a version developed elsewhere and merged later), and
a database migrated before the gap was filled gets the missing version then.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace.connection import redact_url
from fleettrace_worker.errors import SchemaVersionError
from fleettrace_worker.store import database

VERSION_TABLE: Final = "fleettrace_schema_version"
#: Key of the advisory lock that serialises migrations (any bigint the project owns;
#: these are the bytes of "fleettra").
MIGRATION_LOCK_KEY: Final = 0x666C656574747261
_FILE_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

Database = ConnectionPool | psycopg.Connection[tuple[object, ...]]


class NoSchema(SchemaVersionError):
    """The database holds no fleettrace schema at all (not an older one)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class MigrationResult:
    from_version: int
    to_version: int
    applied: tuple[str, ...]


@cache
def available() -> tuple[Migration, ...]:
    """The migrations shipped with this code, in order of their numbers (which may
    leave gaps, never repeat)."""
    folder = resources.files("fleettrace_worker.store").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if not found or 0 in versions or len(set(versions)) != len(versions):
        raise RuntimeError(f"migration files must have distinct numbers from 1: {versions}")
    return tuple(found)


def latest_version() -> int:
    return available()[-1].version


def applied_versions(conn: psycopg.Connection[tuple[object, ...]]) -> frozenset[int] | None:
    """The versions recorded in the database; ``None`` when it was never migrated."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VERSION_TABLE,)).fetchone()
    if not exists or not exists[0]:
        return None
    rows = conn.execute(
        sql.SQL("SELECT version FROM {} WHERE version IS NOT NULL").format(
            sql.Identifier(VERSION_TABLE)
        )
    ).fetchall()
    return frozenset(int(row[0]) for row in rows)  # type: ignore[call-overload]


def current_version(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    """The highest version recorded in the database; ``None`` when it was never
    migrated, 0 when its version table is empty."""
    applied = applied_versions(conn)
    if applied is None:
        return None
    return max(applied, default=0)


def migrate(db: Database) -> MigrationResult:
    """Apply what is missing, all in one transaction; refuse a database that is newer."""
    with _session(db) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(VERSION_TABLE))
        )
        recorded = applied_versions(conn) or frozenset()
        _refuse_unknown(recorded)
        found = max(recorded, default=0)
        applied: list[str] = []
        for migration in available():
            if migration.version in recorded:
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(
                    sql.Identifier(VERSION_TABLE)
                ),
                (migration.version, migration.name),
            )
            applied.append(f"{migration.version:04d}_{migration.name}")
        return MigrationResult(found, latest_version(), tuple(applied))


def check_schema(db: Database) -> int:
    """The schema version, when it is exactly the one this code was written for.

    Raises :class:`SchemaVersionError` naming the version found otherwise: the worker
    must not write rows into tables whose meaning it does not know.
    """
    with _session(db) as conn:
        recorded = applied_versions(conn)
        conn.rollback()
    expected = latest_version()
    if not recorded:
        raise NoSchema(
            f"the database has no fleettrace schema (found no version, expected {expected}); "
            "run `fleettrace migrate`"
        )
    _refuse_unknown(recorded)
    found = max(recorded)
    if found < expected:
        raise SchemaVersionError(
            f"the database schema is version {found}, this code needs version {expected}; "
            "run `fleettrace migrate`"
        )
    missing = [f"{m.version:04d}_{m.name}" for m in available() if m.version not in recorded]
    if missing:
        raise SchemaVersionError(
            f"the database schema lacks {', '.join(missing)}; run `fleettrace migrate`"
        )
    return found


def pool_for_current_schema(url: str) -> ConnectionPool:
    """A small pool for a short command, on a database whose schema is this code's:
    a wrong URL, a server that is away or a schema to migrate is reported up front, in
    one line, rather than as a missing table halfway through."""
    pool = database.create_checked_pool(url)
    try:
        check_schema(pool)
    except BaseException:
        pool.close()
        raise
    return pool


def pool_for_reading(url: str) -> ConnectionPool:
    """:func:`pool_for_current_schema` for a command that only reads or removes rows.

    A database with no fleettrace schema at all holds no fleettrace data: most likely
    the command was pointed at the wrong one (a default URL, a stale variable), so it
    says that, with the URL it tried (password hidden), instead of asking to migrate
    a database the user never meant to use.
    """
    try:
        return pool_for_current_schema(url)
    except NoSchema:
        raise SchemaVersionError(
            f"no fleettrace data here: {redact_url(url)} has no fleettrace tables "
            "(give the database the worker writes to: --database-url or "
            "$FLEETTRACE_DATABASE_URL)"
        ) from None


def _refuse_unknown(recorded: frozenset[int]) -> None:
    """A recorded version this code does not ship: a newer fleettrace (or another
    build) migrated the database, and what its tables mean is unknown here."""
    known = {m.version for m in available()}
    unknown = sorted(recorded - known)
    if not unknown:
        return
    if unknown[-1] > latest_version():
        raise _newer(unknown[-1])
    raise SchemaVersionError(
        f"the database has schema version {unknown[0]}, which this code does not know "
        f"(it ships {', '.join(map(str, sorted(known)))}); upgrade fleettrace"
    )


def _newer(found: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"the database schema is version {found}, newer than this code knows "
        f"(latest {latest_version()}); upgrade fleettrace"
    )


@contextmanager
def _session(db: Database) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    if isinstance(db, ConnectionPool):
        with database.connection(db) as conn:
            yield conn
        return
    try:
        yield db
    except psycopg.OperationalError as error:
        raise database.translate(error, db.info.dsn) from None
