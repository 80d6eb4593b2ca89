"""The Performance page and its API: LLM latency and time to first token per model and
tool calls per tool (error rate, durations) from PostgreSQL, and the durations the live
histograms hold (tools, actors, context builds, index queries, sandbox operations) from
Redis.

Latency percentiles are exact (``percentile_cont`` over the stored calls of the range);
the live ones come from the sketches, within 2 % (:mod:`fleettrace.live`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from psycopg import sql
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from fleettrace_worker.serve.dashboard import queries
from fleettrace_worker.serve.dashboard.api import answer, params
from fleettrace_worker.serve.dashboard.context import Dashboard
from fleettrace_worker.serve.dashboard.pages import e, guarded, layout, number, table, when
from fleettrace_worker.serve.dashboard.samples import sample_rows

_PERCENTILES = sql.SQL(
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms, "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_ms, "
    "percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99_ms, "
    # Aggregates skip NULLs: time to first token is of the calls that reported one.
    "count(ttft_ms) AS ttft_calls, "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p50_ms, "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p95_ms"
)


def _latency_rows(
    database_url: str, namespace: str, span: queries.TimeRange, *, step_s: int | None = None
) -> list[dict[str, Any]]:
    """The one latency query: per model (and per step of ``step_s`` seconds when
    given, ``t`` its start in Unix seconds) of ``namespace``'s calls in ``span``."""
    bucket = sql.SQL(
        "extract(epoch FROM date_bin(make_interval(secs => %(step)s), started_at, "
        "'2000-01-01T00:00:00Z'::timestamptz))::bigint AS t, "
    )
    query = sql.SQL(
        "SELECT {bucket}model AS key, count(*) AS calls, {percentiles}, "
        # Throughput of the calls that produced tokens: a failed call's time is not
        # spent generating, and a model whose calls all failed has none (NULL).
        "sum(completion_tokens) AS completion_tokens, "
        "sum(latency_ms) FILTER (WHERE completion_tokens IS NOT NULL) AS latency_ms, "
        "count(error) AS errors FROM llm_traces "
        "WHERE namespace = %(namespace)s AND started_at >= %(start)s AND started_at < %(end)s "
        "GROUP BY {groups} ORDER BY {groups}"
    ).format(
        bucket=bucket if step_s else sql.SQL(""),
        percentiles=_PERCENTILES,
        groups=sql.SQL("1, 2" if step_s else "key"),
    )
    bound = {"step": step_s, "namespace": namespace, "start": span.start, "end": span.end}
    with queries.connect(database_url) as conn:
        return conn.execute(query, bound).fetchall()


def latency_table(
    database_url: str, namespace: str, span: queries.TimeRange
) -> list[dict[str, Any]]:
    """Per model of ``namespace``'s calls: how many, latency p50/p95/p99, time to first
    token p50/p95, completion tokens per second of the latency of the calls that
    produced them, and the share that failed."""
    return [
        {
            "key": row["key"],
            "calls": row["calls"],
            "p50_ms": row["p50_ms"],
            "p95_ms": row["p95_ms"],
            "p99_ms": row["p99_ms"],
            "ttft_calls": row["ttft_calls"],
            "ttft_p50_ms": row["ttft_p50_ms"],
            "ttft_p95_ms": row["ttft_p95_ms"],
            "completion_tokens_per_s": (
                row["completion_tokens"] / (row["latency_ms"] / 1000)
                if row["completion_tokens"] is not None and row["latency_ms"]
                else None
            ),
            "error_rate": row["errors"] / row["calls"],
        }
        for row in _latency_rows(database_url, namespace, span)
    ]


def latency_series(
    database_url: str, namespace: str, span: queries.TimeRange
) -> list[dict[str, Any]]:
    """Per step (``span.step_s``) and model of ``namespace``'s calls: calls, latency
    p50/p95 and time to first token p50/p95 (None in a step where no call reported
    one), oldest first."""
    fields = ("t", "key", "calls", "p50_ms", "p95_ms", "ttft_p50_ms", "ttft_p95_ms")
    rows = _latency_rows(database_url, namespace, span, step_s=span.step_s)
    return [{name: row[name] for name in fields} for row in rows]


def tool_table(database_url: str, namespace: str, span: queries.TimeRange) -> list[dict[str, Any]]:
    """Per tool of ``namespace``'s stored tool calls (``tool_calls``): calls, failed
    calls (``outcome = 'error'``), their rate, and duration p50/p95/p99; tools by name."""
    query = (
        "SELECT tool AS key, count(*) AS calls, "
        "count(*) FILTER (WHERE outcome = 'error') AS errors, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms, "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms, "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms "
        "FROM tool_calls WHERE namespace = %s AND started_at >= %s AND started_at < %s "
        "GROUP BY tool ORDER BY tool LIMIT %s"
    )
    with queries.connect(database_url) as conn:
        rows = conn.execute(query, (namespace, span.start, span.end, queries.MAX_LIMIT)).fetchall()
    return [
        {
            "key": row["key"],
            "calls": row["calls"],
            "errors": row["errors"],
            "error_rate": row["errors"] / row["calls"],
            "p50_ms": row["p50_ms"],
            "p95_ms": row["p95_ms"],
            "p99_ms": row["p99_ms"],
        }
        for row in rows
    ]


def performance_routes(board: Dashboard) -> list[BaseRoute]:
    def api_latency(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            keys = board.keys(given.get("namespace"))
            span = queries.parse_range(given)
            items = latency_table(board.database_url, keys.namespace, span)
            return {
                **queries.listing(items),
                "from": span.start.isoformat(),
                "to": span.end.isoformat(),
            }

        return answer(work)

    def api_series(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            keys = board.keys(given.get("namespace"))
            span = queries.parse_range(given)
            items = latency_series(board.database_url, keys.namespace, span)
            return {
                **queries.listing(items),
                "step_s": span.step_s,
                "from": span.start.isoformat(),
                "to": span.end.isoformat(),
            }

        return answer(work)

    def api_tools(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            keys = board.keys(given.get("namespace"))
            span = queries.parse_range(given)
            items = tool_table(board.database_url, keys.namespace, span)
            return {
                **queries.listing(items),
                "from": span.start.isoformat(),
                "to": span.end.isoformat(),
            }

        return answer(work)

    def page(request: Request) -> HTMLResponse:
        given = dict(request.query_params)
        keys = board.keys(given.get("namespace"))
        span = queries.parse_range(given)
        models = latency_table(board.database_url, keys.namespace, span)
        tools = tool_table(board.database_url, keys.namespace, span)
        samples = sample_rows(board.database_url, keys.namespace, span)
        live = [s for s in queries.live_items(board.redis, keys) if s["type"] == "histogram"]
        api = {
            "namespace": keys.namespace,
            "from": span.start.isoformat(),
            "to": span.end.isoformat(),
        }
        ranges = "".join(
            f'<option value="{e(k)}"{" selected" if k == span.label else ""}>last {e(k)}</option>'
            for k in queries.RANGES
        )
        form = (
            '<form method="get" action="/performance" class="controls">'
            f'<input type="hidden" name="namespace" value="{e(keys.namespace)}">'
            f'<label>range <select name="range">{ranges}</select></label>'
            "<button>Show</button></form>"
        )
        body = (
            form + f"<p>Calls stored from {when(api['from'])} to {when(api['to'])}.</p>"
            f'<div id="latency-chart" data-api="{e("/api/performance/series?" + urlencode(api))}"'
            ' data-field="p95_ms" data-axis="p95 latency (ms)" data-unit="ms"'
            ' role="img" aria-label="p95 latency over time"></div>'
            f'<div id="ttft-chart" data-api="{e("/api/performance/series?" + urlencode(api))}"'
            ' data-field="ttft_p95_ms" data-axis="p95 time to first token (ms)" data-unit="ms"'
            ' role="img" aria-label="p95 time to first token over time"></div>'
            f'<div id="samples-chart" data-api="{e("/api/performance/samples?" + urlencode(api))}"'
            ' data-empty="no metric samples in this range" data-field="p95_ms"'
            ' data-axis="p95 duration, metric samples (ms)" data-unit="ms"'
            ' role="img" aria-label="p95 durations of the metric samples over time"></div>'
            + table(
                "LLM latency by model (PostgreSQL)",
                (
                    "model",
                    "calls",
                    "p50 (ms)",
                    "p95 (ms)",
                    "p99 (ms)",
                    "TTFT p50 (ms)",
                    "TTFT p95 (ms)",
                    "completion tokens/s",
                    "errors",
                ),
                (
                    (
                        e(m["key"]),
                        e(m["calls"]),
                        number(m["p50_ms"]),
                        number(m["p95_ms"]),
                        number(m["p99_ms"]),
                        number(m["ttft_p50_ms"]),
                        number(m["ttft_p95_ms"]),
                        number(m["completion_tokens_per_s"]),
                        f"{m['error_rate'] * 100:.1f} %",
                    )
                    for m in models
                ),
                "latency-table",
            )
            + table(
                "Tool calls by tool (PostgreSQL)",
                ("tool", "calls", "errors", "error rate", "p50 (ms)", "p95 (ms)", "p99 (ms)"),
                (
                    (
                        e(t["key"]),
                        e(t["calls"]),
                        e(t["errors"]),
                        f"{t['error_rate'] * 100:.1f} %",
                        number(t["p50_ms"]),
                        number(t["p95_ms"]),
                        number(t["p99_ms"]),
                    )
                    for t in tools
                ),
                "tool-table",
            )
            + table(
                "Durations from the metric samples (PostgreSQL)",
                ("metric", "samples", "p50 (ms)", "p95 (ms)", "p99 (ms)"),
                (
                    (
                        e(m["key"]),
                        e(m["samples"]),
                        number(m["p50_ms"]),
                        number(m["p95_ms"]),
                        number(m["p99_ms"]),
                    )
                    for m in samples
                ),
                "samples-table",
            )
            + table(
                "Durations, live (every producer summed; percentiles within 2 %)",
                ("metric", "labels", "unit", "count", "p50", "p95", "p99"),
                (
                    (
                        e(s["key"]),
                        e(", ".join(f"{k}={v}" for k, v in s["labels"].items())),
                        e(s["unit"]),
                        e(s["count"]),
                        number(s["p50"]),
                        number(s["p95"]),
                        number(s["p99"]),
                    )
                    for s in live
                ),
                "live-durations",
            )
        )
        return layout(request, "Performance", body, keys=keys)

    return [
        Route("/api/performance", api_latency),
        Route("/api/performance/series", api_series),
        Route("/api/performance/tools", api_tools),
        Route("/performance", guarded("Performance", page)),
    ]
