"""Durations from the stored metric samples (``metric_samples``): context builds, index
queries and sandbox operations, each a histogram the agents observe one value at a time
(:class:`fleettrace.metrics.MetricKey`). Percentiles are exact (``percentile_cont``)
over the samples observed in the range, per metric, and per step for the chart.

The table is partitioned by day on ``observed_at``; a range reads its days' partitions
by ``metric_samples_observed_at_idx`` and filters the namespace and the metric.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import sql
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fleettrace.metrics import MetricKey
from fleettrace_worker.serve.dashboard import queries
from fleettrace_worker.serve.dashboard.api import answer, params
from fleettrace_worker.serve.dashboard.context import Dashboard

#: The metrics read, in the order shown (a fixed list: never the input).
SAMPLE_KEYS: Final = (
    MetricKey.CONTEXT_BUILD_DURATION_MS.value,
    MetricKey.INDEX_QUERY_DURATION_MS.value,
    MetricKey.SANDBOX_OPERATION_DURATION_MS.value,
)


def sample_rows(
    database_url: str, namespace: str, span: queries.TimeRange, *, step_s: int | None = None
) -> list[dict[str, Any]]:
    """Per metric of ``SAMPLE_KEYS`` (and per step of ``step_s`` seconds when given,
    ``t`` its start in Unix seconds, oldest first) of ``namespace``'s samples observed
    in ``span``: how many, and their p50/p95/p99 (ms)."""
    bucket = sql.SQL(
        "extract(epoch FROM date_bin(make_interval(secs => %(step)s), observed_at, "
        "'2000-01-01T00:00:00Z'::timestamptz))::bigint AS t, "
    )
    query = sql.SQL(
        "SELECT {bucket}key, count(*) AS samples, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY value) AS p50_ms, "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY value) AS p95_ms, "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY value) AS p99_ms "
        "FROM metric_samples WHERE namespace = %(namespace)s AND key = ANY(%(keys)s) "
        "AND observed_at >= %(start)s AND observed_at < %(end)s "
        "GROUP BY {groups} ORDER BY {groups}"
    ).format(
        bucket=bucket if step_s else sql.SQL(""),
        groups=sql.SQL("1, 2" if step_s else "key"),
    )
    bound = {
        "step": step_s,
        "namespace": namespace,
        "keys": list(SAMPLE_KEYS),
        "start": span.start,
        "end": span.end,
    }
    with queries.connect(database_url) as conn:
        rows = conn.execute(query, bound).fetchall()
    order = {key: i for i, key in enumerate(SAMPLE_KEYS)}
    if not step_s:
        rows.sort(key=lambda row: order[row["key"]])
    return rows


def sample_routes(board: Dashboard) -> list[BaseRoute]:
    def api_samples(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            keys = board.keys(given.get("namespace"))
            span = queries.parse_range(given)
            items = sample_rows(board.database_url, keys.namespace, span, step_s=span.step_s)
            return {
                **queries.listing(items),
                "step_s": span.step_s,
                "from": span.start.isoformat(),
                "to": span.end.isoformat(),
            }

        return answer(work)

    return [Route("/api/performance/samples", api_samples)]
