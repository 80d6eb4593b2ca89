"""PostgreSQL's own ingestion rate for the rows a worker stored: the ceiling a worker
can approach on this machine, measured in the same run.

The rows are written out by the server (``COPY ... TO`` a file, binary) and copied
back by the server (``COPY llm_traces_copy_probe FROM`` that file) into an empty
table of the same shape: ``LIKE llm_traces INCLUDING ALL`` brings the columns,
defaults, CHECKs, the primary key and every index. No client is in that path, so
its rate is what PostgreSQL itself can take. Needs a superuser (server-side files)
and a server on this machine that can write ``/tmp``; otherwise the ceiling is not
measured and the reason is reported instead.

The plain table has no partitions and no triggers, so it is a higher ceiling than
the table the worker writes. The same file is then copied back into that table
itself (emptied first, its rows counted already): the daily partitions, every index
and the statement triggers that keep the hourly cost rollup, as the worker meets
them. That is PostgreSQL's own rate for these rows where they are stored, and the
worker's share is read against it (``same_table``).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Any, Final

import psycopg
from psycopg import sql

from benchmarks.load.stats import rate

PROBE_TABLE: Final = "llm_traces_copy_probe"


def copy_ceiling(database_url: str, table: str) -> dict[str, Any]:
    path = f"/tmp/fleettrace-ceiling-{uuid.uuid4().hex}.bin"
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                # Through a query: a partitioned table (schema 8) cannot be copied out as is.
                sql.SQL("COPY (SELECT * FROM {}) TO {} (FORMAT binary)").format(
                    sql.Identifier(table), sql.Literal(path)
                )
            )
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(PROBE_TABLE)))
            conn.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                    sql.Identifier(PROBE_TABLE), sql.Identifier(table)
                )
            )
            conn.execute("CHECKPOINT")  # the probe starts as clean as the worker did
            started = time.perf_counter()
            cursor = conn.execute(
                sql.SQL("COPY {} FROM {} (FORMAT binary)").format(
                    sql.Identifier(PROBE_TABLE), sql.Literal(path)
                )
            )
            seconds = time.perf_counter() - started
            rows = cursor.rowcount
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(PROBE_TABLE)))
            same_table = _same_table(conn, table, path)
    except psycopg.Error as error:
        return {"rows_per_s": None, "how": f"not measured: {type(error).__name__}: {error}"}
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": rate(rows, seconds),
        "how": f"server-side binary COPY of the {rows:,} stored rows into an empty "
        f"{PROBE_TABLE} (LIKE {table} INCLUDING ALL: no partitions, no triggers), "
        "one transaction",
        "same_table": same_table,
    }


def _same_table(conn: psycopg.Connection[Any], table: str, path: str) -> dict[str, Any]:
    """The same rows copied by the server back into ``table`` itself, emptied first."""
    try:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        cursor = conn.execute(
            sql.SQL("COPY {} FROM {} (FORMAT binary)").format(
                sql.Identifier(table), sql.Literal(path)
            )
        )
        seconds = time.perf_counter() - started
    except psycopg.Error as error:
        return {"rows_per_s": None, "how": f"not measured: {type(error).__name__}: {error}"}
    rows = cursor.rowcount
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": rate(rows, seconds),
        "how": f"server-side binary COPY of the same {rows:,} rows back into {table} "
        "itself, emptied first (daily partitions, every index, the rollup triggers), "
        "one transaction",
    }
