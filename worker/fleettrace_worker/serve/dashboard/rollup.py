"""Cost over a long range from the hourly rollup (``llm_cost_hourly``, schema 7): the
Cost table, and the chart's series when its steps are whole hours.

The rollup holds, per UTC hour, namespace, provider, model and actor, the sums the
Cost table shows; triggers on ``llm_traces`` keep it in the transaction of every
insert, delete and update (store/migrations/0007_cost_rollup.sql). A range is read in
three parts: its whole hours from the rollup, and the partial hour at each end from
the raw rows, so the answer is the raw rows' sums exactly, at the cost of reading
about one row per hour and key instead of one per call. The rollup keeps a NULL key
(a call without an actor) as ``''``, read back here as NULL.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

#: The columns the rollup is keyed by; cost grouped by anything else reads raw rows.
ROLLUP_COLUMNS: Final = frozenset({"model", "provider", "actor"})
HOUR: Final = timedelta(hours=1)


def whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The first and the end of the whole UTC hours inside ``[start, end)``, if any."""
    floor = start.replace(minute=0, second=0, microsecond=0)
    head = floor if floor == start else floor + HOUR
    tail = end.replace(minute=0, second=0, microsecond=0)
    return (head, tail) if head < tail else None


def cost_rows(
    conn: psycopg.Connection[dict[str, Any]],
    column: str,
    namespace: str,
    start: datetime,
    end: datetime,
    *,
    limit: int,
) -> list[dict[str, Any]] | None:
    """Rows of ``key, calls, priced_calls, cost_usd, prompt_tokens, completion_tokens``
    per ``column`` in ``[start, end)``, costliest first, as the raw query answers; None
    when the range holds no whole hour (or the column is not in the rollup)."""
    hours = whole_hours(start, end)
    if hours is None or column not in ROLLUP_COLUMNS:
        return None
    head, tail = hours
    query = sql.SQL(
        "WITH parts AS ("
        "SELECT {col} AS key, count(*) AS calls, count(cost_usd) AS priced_calls, "
        "sum(cost_usd::numeric) AS cost_usd, sum(prompt_tokens) AS prompt_tokens, "
        "sum(completion_tokens) AS completion_tokens FROM llm_traces "
        "WHERE namespace = %(namespace)s AND started_at >= %(start)s AND started_at < %(head)s "
        "GROUP BY 1 "
        "UNION ALL "
        "SELECT {col}, count(*), count(cost_usd), sum(cost_usd::numeric), sum(prompt_tokens), "
        "sum(completion_tokens) FROM llm_traces "
        "WHERE namespace = %(namespace)s AND started_at >= %(tail)s AND started_at < %(end)s "
        "GROUP BY 1 "
        "UNION ALL "
        "SELECT nullif({col}, ''), sum(calls), sum(priced_calls), "
        "CASE WHEN sum(priced_calls) > 0 THEN sum(cost_usd) END, sum(prompt_tokens), "
        "sum(completion_tokens) FROM llm_cost_hourly "
        "WHERE namespace = %(namespace)s AND hour >= %(head)s AND hour < %(tail)s GROUP BY 1) "
        "SELECT key, sum(calls)::bigint AS calls, sum(priced_calls)::bigint AS priced_calls, "
        "sum(cost_usd) AS cost_usd, sum(prompt_tokens) AS prompt_tokens, "
        "sum(completion_tokens) AS completion_tokens FROM parts GROUP BY key "
        "HAVING sum(calls) > 0 "
        "ORDER BY coalesce(sum(cost_usd), 0) DESC, key NULLS LAST LIMIT %(limit)s"
    ).format(col=sql.Identifier(column))
    bound = {
        "namespace": namespace,
        "start": start,
        "head": head,
        "tail": tail,
        "end": end,
        "limit": limit,
    }
    return conn.execute(query, bound).fetchall()


def series_rows(
    conn: psycopg.Connection[dict[str, Any]],
    column: str,
    namespace: str,
    start: datetime,
    end: datetime,
    *,
    step_s: int,
) -> list[dict[str, Any]] | None:
    """Rows of ``t, key, calls, cost_usd`` per step (``date_bin`` from 2000-01-01 UTC, as
    the raw query bins) and ``column``, oldest first; None when the steps are not whole
    hours or the range holds no whole hour (the raw rows answer then)."""
    hours = whole_hours(start, end)
    if hours is None or column not in ROLLUP_COLUMNS or step_s % 3600:
        return None
    head, tail = hours

    def step_of(at: str) -> sql.Composed:
        return sql.SQL(
            "extract(epoch FROM date_bin(make_interval(secs => %(step)s), {}, "
            "'2000-01-01T00:00:00Z'::timestamptz))::bigint"
        ).format(sql.Identifier(at))

    query = sql.SQL(
        "SELECT t, key, sum(calls)::bigint AS calls, sum(cost_usd)::float8 AS cost_usd FROM ("
        "SELECT {raw_step} AS t, {col} AS key, count(*) AS calls, "
        "coalesce(sum(cost_usd::numeric), 0) AS cost_usd FROM llm_traces "
        "WHERE namespace = %(namespace)s AND ((started_at >= %(start)s AND started_at < %(head)s) "
        "OR (started_at >= %(tail)s AND started_at < %(end)s)) GROUP BY 1, 2 "
        "UNION ALL "
        "SELECT {hour_step}, nullif({col}, ''), sum(calls), sum(cost_usd) FROM llm_cost_hourly "
        "WHERE namespace = %(namespace)s AND hour >= %(head)s AND hour < %(tail)s GROUP BY 1, 2"
        ") AS parts GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(raw_step=step_of("started_at"), hour_step=step_of("hour"), col=sql.Identifier(column))
    bound = {
        "namespace": namespace,
        "start": start,
        "head": head,
        "tail": tail,
        "end": end,
        "step": step_s,
    }
    return conn.execute(query, bound).fetchall()
