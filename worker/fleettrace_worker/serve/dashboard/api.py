"""The JSON API under ``/api/`` (docs/dashboard.md documents each shape).

Lists answer ``{"items": [...], "next_cursor": ...}``, also when empty; a query the
server cannot answer is a 4xx ``{"error": "..."}``; Redis or PostgreSQL away is a
503 with the same shape. The pages use these endpoints themselves.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from typing import Any, Final

import psycopg
import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from fleettrace.errors import ConfigurationError, FleettraceError
from fleettrace.keys import Keys
from fleettrace_worker.errors import DatabaseUnavailable
from fleettrace_worker.keys import GROUPS
from fleettrace_worker.serve.dashboard import dead_letters, queries
from fleettrace_worker.serve.dashboard.access import CSRF_HEADER, csrf_problem
from fleettrace_worker.serve.dashboard.context import Dashboard
from fleettrace_worker.serve.dashboard.live_activity import live_activity
from fleettrace_worker.serve.dashboard.queries import QueryError
from fleettrace_worker.stream.deadletter import replay_dead_letters

log = logging.getLogger(__name__)

#: The largest replay request body, and the most ids one request may name.
MAX_BODY_BYTES: Final = 64 * 1024
MAX_REPLAY_IDS: Final = 500


def unavailable(error: Exception) -> tuple[str, int]:
    """A one-line message and status for a server the dashboard cannot read."""
    if isinstance(error, psycopg.errors.UndefinedTable):
        return "the database has no fleettrace tables: run fleettrace migrate", 503
    if isinstance(error, DatabaseUnavailable):
        return f"PostgreSQL unavailable: {error}", 503
    if isinstance(error, psycopg.Error):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"PostgreSQL unavailable: {first}", 503
    return f"Redis unavailable: {error}", 503


def answer(work: Callable[[], Any]) -> Response:
    """Run ``work`` and answer its result as JSON, or the error as a 4xx/503."""
    try:
        return JSONResponse(work())
    except QueryError as error:
        return JSONResponse({"error": str(error)}, status_code=error.status)
    except (psycopg.Error, redis.RedisError, FleettraceError) as error:
        message, status = unavailable(error)
        log.warning("dashboard: %s", message)
        return JSONResponse({"error": message}, status_code=status)


def params(request: Request) -> dict[str, str]:
    found = dict(request.query_params)
    queries.check_lengths(found)
    return found


def group_of(raw: str | None) -> str:
    if raw not in GROUPS:
        raise QueryError(
            f"group must be one of {', '.join(GROUPS)}, got {queries.shown(raw or '')}"
        )
    return raw


def api_routes(board: Dashboard) -> list[BaseRoute]:
    def live(request: Request) -> Response:
        def work() -> dict[str, Any]:
            keys = board.keys(params(request).get("namespace"))
            return queries.listing(queries.live_items(board.redis, keys))

        return answer(work)

    def overview(request: Request) -> Response:
        return answer(
            lambda: queries.overview(board.redis, board.keys(params(request).get("namespace")))
        )

    def activity(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            keys = board.keys(given.get("namespace"))
            start, _ = queries.parse_day_start(given.get("day_start"))
            items = queries.recent_activity(board.database_url, keys.namespace, day_start=start)
            return queries.listing(items)

        return answer(work)

    def activity_live(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            keys = board.keys(given.get("namespace"))
            start, _ = queries.parse_day_start(given.get("day_start"))
            return live_activity(board.redis, keys, start)

        return answer(work)

    def cost_csv(request: Request) -> Response:
        try:
            given = params(request)
            keys = board.keys(given.get("namespace"))
            by = queries.parse_choice("by", given.get("by"), queries.COST_GROUPS, "model")
            span = queries.parse_range(given)
            items = queries.cost_table(
                board.database_url, keys.namespace, by, span, queries.MAX_LIMIT
            )
        except QueryError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        except (psycopg.Error, redis.RedisError, FleettraceError) as error:
            message, status = unavailable(error)
            return JSONResponse({"error": message}, status_code=status)
        return Response(
            csv_text(by, items),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="fleettrace-cost-by-{by}.csv"'},
        )

    def cost(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            by = queries.parse_choice("by", given.get("by"), queries.COST_GROUPS, "model")
            span = queries.parse_range(given)
            limit = queries.parse_limit(given.get("limit"))
            keys = board.keys(given.get("namespace"))
            items = queries.cost_table(board.database_url, keys.namespace, by, span, limit)
            return {**queries.listing(items), "by": by, **_span(span)}

        return answer(work)

    def cost_series(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            by = queries.parse_choice("by", given.get("by"), queries.COST_GROUPS, "model")
            span = queries.parse_range(given)
            keys = board.keys(given.get("namespace"))
            items = queries.cost_series(board.database_url, keys.namespace, by, span)
            return {**queries.listing(items), "by": by, "step_s": span.step_s, **_span(span)}

        return answer(work)

    def dlq(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            keys = board.keys(given.get("namespace"))
            keys = keys.for_shard(dead_letters.parse_shard(given.get("shard")))
            group = group_of(given.get("group", "persist"))
            limit = queries.parse_limit(given.get("limit"))
            items, cursor = dead_letters.dead_letter_items(
                board.redis, keys, group, given.get("cursor") or None, limit
            )
            return queries.listing(items, cursor)

        return answer(work)

    async def replay(request: Request) -> Response:
        problem = csrf_problem(request, request.headers.get(CSRF_HEADER, ""))
        if problem is not None:
            return JSONResponse({"error": problem}, status_code=403)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": "the request body is too large"}, status_code=413)
        try:
            ids = _ids(body)
            group = group_of(request.path_params["group"])
            shard = dead_letters.parse_shard(request.query_params.get("shard"))
        except QueryError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        namespace = request.query_params.get("namespace")
        return await run_in_threadpool(
            answer,
            lambda: replay_report(board, board.keys(namespace).for_shard(shard), group, ids),
        )

    return [
        Route("/api/live", live),
        Route("/api/overview", overview),
        Route("/api/activity", activity),
        Route("/api/live/activity", activity_live),
        Route("/api/cost", cost),
        Route("/api/cost.csv", cost_csv),
        Route("/api/cost/series", cost_series),
        Route("/api/dlq", dlq),
        Route("/api/dlq/{group}/replay", replay, methods=["POST"]),
    ]


def replay_report(board: Dashboard, keys: Keys, group: str, ids: list[str]) -> dict[str, Any]:
    """Replay the named dead letters of ``group``; what came home, what still fails."""
    try:
        report = replay_dead_letters(board.redis, keys, group, ids)
    except ConfigurationError as error:
        raise QueryError(str(error)) from None
    return {
        "replayed": report.replayed,
        "refused": [{"id": dead_id, "reason": reason} for dead_id, reason in report.refused],
        "missing": report.missing,
    }


#: A cell starting with one of these is a formula to a spreadsheet: quoted with '.
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS: Final = (
    "calls",
    "priced_calls",
    "unpriced_calls",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
)


def csv_text(by: str, items: list[dict[str, Any]]) -> str:
    """The cost table as CSV; a key an agent chose cannot become a spreadsheet formula."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, *CSV_COLUMNS])
    for item in items:
        key = "" if item["key"] is None else str(item["key"])
        if key.startswith(_FORMULA_STARTS):
            key = "'" + key
        writer.writerow([key, *(item[column] for column in CSV_COLUMNS)])
    return out.getvalue()


def _ids(body: bytes) -> list[str]:
    try:
        document = json.loads(body or b"null")
    except ValueError:
        raise QueryError('the body must be JSON: {"ids": ["1700000000000-0", ...]}') from None
    ids = document.get("ids") if isinstance(document, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise QueryError('the body must name the dead letters: {"ids": ["1700000000000-0"]}')
    if len(ids) > MAX_REPLAY_IDS:
        raise QueryError(f"at most {MAX_REPLAY_IDS} ids per request")
    return ids


def _span(span: queries.TimeRange) -> dict[str, str]:
    return {"from": span.start.isoformat(), "to": span.end.isoformat()}
