"""The Overview page: the live figures from Redis (spend, the costliest plans, the calls
of the last hour, today and the last 24 hours and the latency per model from the live
counters, every live series, dead letters, the consumer groups, dropped records, the
workers) and the calls stored lately from PostgreSQL (the same windows, and the
latency per model of the last hour), re-read by ``static/app.js`` every few seconds.

"Today" starts at the reader's local midnight: the script sends it as ``day_start``
(Unix seconds) with every refresh; without the script it is UTC midnight, labelled so.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from fleettrace.keys import Keys
from fleettrace_worker.serve.dashboard import queries
from fleettrace_worker.serve.dashboard.api import unavailable
from fleettrace_worker.serve.dashboard.context import Dashboard
from fleettrace_worker.serve.dashboard.live_activity import live_activity
from fleettrace_worker.serve.dashboard.pages import (
    e,
    guarded,
    layout,
    number,
    plan_href,
    table,
    usd,
    when,
)
from fleettrace_worker.serve.dashboard.performance import latency_table

#: The Overview's latency per model covers the calls stored with a start in this window.
LATENCY_WINDOW: Final = timedelta(hours=1)


def overview_routes(board: Dashboard) -> list[BaseRoute]:
    return [Route("/", guarded("Overview", lambda request: render(board, request)))]


def render(board: Dashboard, request: Request) -> HTMLResponse:
    """The Overview: live figures from Redis, the calls stored lately from PostgreSQL."""
    given = dict(request.query_params)
    keys = board.keys(given.get("namespace"))
    day_start = queries.parse_day_start(given.get("day_start"))
    live = queries.overview(board.redis, keys)
    series = queries.live_items(board.redis, keys)
    body = (
        f'<section id="live" data-refresh="5000"><p class="figure">Live spend '
        f'<span id="spend">{usd(live["spend_usd"])}</span> USD '
        f'<span class="note">(plans whose counters have not expired)</span></p>'
        + table(
            "Costliest plans (live)",
            (
                "plan",
                "cost (USD)",
                "budget (USD)",
                "share used",
                "priced calls",
                "decisions",
                "child plans",
            ),
            (
                (
                    f'<a href="{e(plan_href(str(p["plan_id"]), keys))}">{e(p["plan_id"])}</a>',
                    usd(p["cost_usd"]),
                    "" if p["budget_usd"] is None else usd(p["budget_usd"]),
                    percent(p["share_used"]),
                    e(p["priced_calls"]),
                    e(p["decisions"]),
                    e(p["child_plans"]),
                )
                for p in live["top_plans"]
            ),
            "top-plans",
        )
        + _live_calls(board, keys, day_start)
        + table(
            "Live series (every producer summed)",
            ("metric", "labels", "unit", "count", "sum", "value", "p50", "p95", "p99"),
            (
                (
                    e(s["key"]),
                    e(", ".join(f"{k}={v}" for k, v in s["labels"].items())),
                    e(s["unit"]),
                    e(s["count"]),
                    number(s["sum"]),
                    number(s["value"]),
                    number(s["p50"]),
                    number(s["p95"]),
                    number(s["p99"]),
                )
                for s in series
            ),
            "live-series",
        )
        + _stored(board, keys, day_start)
        + table(
            "Dead letters",
            ("group", "dead letters"),
            ((e(g), e(n)) for g, n in live["dead_letters"].items()),
            "dead-letters",
        )
        + table(
            "Consumer groups",
            ("group", "stream", "pending", "lag", "oldest needed (s)"),
            (
                (
                    e(g["group"]),
                    e(g["stream"]),
                    e(g["pending"]),
                    e(g["lag"]),
                    number(round(g["age_s"], 1)),
                )
                for g in live["groups"]
            ),
            "groups",
        )
        + f'<p class="figure">Records the emitters dropped <span id="dropped">'
        f"{e(live['dropped'])}</span></p>"
        + table(
            "Emitters (each producer's own figures)",
            ("producer", "records sent", "batches", "dropped"),
            (
                (e(m["producer"]), e(m["records"]), e(m["batches"]), e(m["dropped"]))
                for m in live["emitters"]
            ),
            "emitters",
        )
        + table(
            "Workers (their health keys)",
            ("consumer", "ready", "said ready", "reported (s ago)"),
            (
                (
                    e(w["consumer"]),
                    "yes" if w["ready"] else "no",
                    "yes" if w["said_ready"] else "no",
                    "" if w["age_s"] is None else number(round(w["age_s"], 1)),
                )
                for w in live["workers"]
            ),
            "workers",
        )
        + "</section>"
    )
    return layout(request, "Overview", body, keys=keys)


def percent(rate: float | None) -> str:
    return "" if rate is None else f"{rate * 100:.1f} %"


def _window(item: dict[str, object], zone: str) -> str:
    if item["window"] != "today":
        return "last " + e(item["window"])
    if zone == "UTC":
        return "today (since 00:00 UTC)"
    return f"today (since {when(str(item['from']))}, your time zone)"


def _live_window(item: dict[str, Any], zone: str) -> str:
    label = _window({**item, "from": item["start"]}, zone)
    if item["from"] is None:
        return f"{label}: no history yet (the worker keeps one sample a minute)"
    if item["complete"]:
        return label
    return f"{label}: counted since {when(str(item['from']))}"


def _figure(value: object, shown: Callable[[Any], str] = e) -> str:
    return "" if value is None else shown(value)


def _live_calls(board: Dashboard, keys: Keys, day_start: tuple[datetime, str]) -> str:
    """The windows' calls and the latency per model, from the live counters."""
    live = live_activity(board.redis, keys, day_start[0])
    return table(
        "Calls (live counters)",
        ("window", "calls", "calls/min", "spend (USD)", "unpriced calls", "errors", "retried"),
        (
            (
                _live_window(a, day_start[1]),
                _figure(a["calls"]),
                _figure(a["calls_per_minute"], lambda v: f"{v:.2f}"),
                _figure(a["cost_usd"], usd),
                _figure(a["unpriced_calls"]),
                percent(a["error_rate"]),
                percent(a["retry_rate"]),
            )
            for a in live["items"]
        ),
        "live-activity",
    ) + table(
        "LLM latency by model (live counters, every call so far)",
        (
            "provider",
            "model",
            "calls",
            "p50 (ms)",
            "p95 (ms)",
            "p99 (ms)",
            "spend (USD)",
            "unpriced calls",
        ),
        (
            (
                e(m["provider"]),
                e(m["model"]),
                e(m["calls"]),
                number(m["p50_ms"]),
                number(m["p95_ms"]),
                number(m["p99_ms"]),
                "unpriced" if m["cost_usd"] is None else usd(m["cost_usd"]),
                e(m["unpriced_calls"]),
            )
            for m in live["models"]
        ),
        "live-latency",
    )


def _stored(board: Dashboard, keys: Keys, day_start: tuple[datetime, str]) -> str:
    """Calls of the namespace stored lately and the last hour's latency per model, from
    PostgreSQL; its absence is a message, not a broken page."""
    now = datetime.now(UTC)
    hour = queries.TimeRange(now - LATENCY_WINDOW, now, "1h")
    try:
        items = queries.recent_activity(
            board.database_url, keys.namespace, now, day_start=day_start[0]
        )
        models = latency_table(board.database_url, keys.namespace, hour)
    except psycopg.Error as error:
        return f'<p class="error" role="alert">{e(unavailable(error)[0])}</p>'
    return table(
        "Calls stored (PostgreSQL)",
        ("window", "calls", "calls/min", "spend (USD)", "unpriced calls", "errors", "retried"),
        (
            (
                _window(a, day_start[1]),
                e(a["calls"]),
                f"{a['calls_per_minute']:.2f}",
                usd(a["cost_usd"]),
                e(a["unpriced_calls"]),
                percent(a["error_rate"]),
                percent(a["retry_rate"]),
            )
            for a in items
        ),
        "activity",
    ) + table(
        "LLM latency by model (last hour, stored calls)",
        ("model", "calls", "p50 (ms)", "p95 (ms)"),
        ((e(m["key"]), e(m["calls"]), number(m["p50_ms"]), number(m["p95_ms"])) for m in models),
        "overview-latency",
    )
