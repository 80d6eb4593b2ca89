"""What the database says: rows stored, when they were committed, how fresh they were.

``ingested_at`` is ``DEFAULT now()``: the start of the transaction that wrote the
row, which every row of one batch shares. "Committed" below means that instant; it
precedes the real commit by the few milliseconds the transaction takes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from benchmarks.load.stats import rate


def count(database_url: str, table: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def duplicates(database_url: str, table: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) - count(DISTINCT trace_id) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def steady_rate(database_url: str, table: str) -> dict[str, Any]:
    """Rows per second between the first and the last transaction, start-up excluded.

    Transaction k starts when batch k-1 is done (read, decoded, validated, written,
    committed, acknowledged), so the rows of all transactions but the last were
    stored in the time from the first start to the last start.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        batches: list[tuple[datetime, int]] = conn.execute(
            f"SELECT ingested_at, count(*) FROM {table} GROUP BY 1 ORDER BY 1"
        ).fetchall()
    total = sum(n for _, n in batches)
    if len(batches) < 2:
        return {"rows": total, "transactions": len(batches), "rows_per_s": None}
    span_s = (batches[-1][0] - batches[0][0]).total_seconds()
    return {
        "rows": total,
        "transactions": len(batches),
        "rows_per_transaction": round(total / len(batches), 1),
        "span_s": round(span_s, 3),
        "rows_per_s": rate(total - batches[-1][1], span_s),
    }


def freshness_ms(database_url: str, table: str, since: datetime | None = None) -> dict[str, Any]:
    """p50/p99/max of (row committed - record created) over the rows started after ``since``."""
    where = "WHERE started_at >= %s" if since is not None else ""
    params = (since,) if since is not None else ()
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), "
            "percentile_disc(0.5) WITHIN GROUP (ORDER BY lag), "
            "percentile_disc(0.99) WITHIN GROUP (ORDER BY lag), max(lag) "
            f"FROM (SELECT extract(epoch FROM ingested_at - started_at) * 1000 AS lag "
            f"FROM {table} {where}) AS lags",
            params,
        ).fetchone()
    assert row is not None
    rows, p50, p99, worst = row
    return {
        "rows": int(rows),
        "p50_ms": round(float(p50), 2) if p50 is not None else None,
        "p99_ms": round(float(p99), 2) if p99 is not None else None,
        "max_ms": round(float(worst), 2) if worst is not None else None,
    }
