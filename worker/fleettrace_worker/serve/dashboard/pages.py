"""The server-rendered pages: Cost, Dead letters, and login (Overview:
:mod:`.overview_page`; Plans: :mod:`.plan_pages`; Performance: :mod:`.performance`).

Every value that reaches HTML goes through :func:`e` (``html.escape``, quotes too):
plan ids, models, actors, reasons and namespaces are written by agents. The pages
carry no inline script or style (the Content-Security-Policy forbids both); the one
script, ``static/app.js``, converts times to the browser's time zone, refreshes the
Overview, draws the Cost chart from ``/api/cost/series`` and asks before a replay.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from typing import Final
from urllib.parse import parse_qs, quote, urlencode

import psycopg
import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from fleettrace.errors import FleettraceError
from fleettrace.keys import Keys
from fleettrace.shards import shard_keys
from fleettrace_worker.keys import GROUPS
from fleettrace_worker.serve.dashboard import dead_letters, queries
from fleettrace_worker.serve.dashboard.access import (
    CSRF_FIELD,
    TOKEN_COOKIE,
    csrf_problem,
    csrf_token,
    same_secret,
    set_csrf_cookie,
)
from fleettrace_worker.serve.dashboard.api import MAX_BODY_BYTES, replay_report, unavailable
from fleettrace_worker.serve.dashboard.context import Dashboard
from fleettrace_worker.serve.dashboard.queries import QueryError
from fleettrace_worker.serve.dashboard.switcher import namespace_switcher

NAV: Final = (
    ("/", "Overview"),
    ("/cost", "Cost"),
    ("/performance", "Performance"),
    ("/plans", "Plans"),
    ("/dlq", "Dead letters"),
)
DLQ_PAGE: Final = 200


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def usd(value: float | None) -> str:
    """Dollars; ``unpriced`` for a cost nothing of which could be priced (never 0)."""
    return "unpriced" if value is None else f"{value:.6f}"


def number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def when(iso: str) -> str:
    return f'<time datetime="{e(iso)}">{e(iso)}</time>'


def table(caption: str, head: Sequence[str], rows: Iterable[Sequence[str]], table_id: str) -> str:
    """A table of cells already escaped (or made by e/when); an empty one says so."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(head)}" class="empty">nothing yet</td></tr>'
    heads = "".join(f'<th scope="col">{e(h)}</th>' for h in head)
    return (
        f'<table id="{e(table_id)}"><caption>{e(caption)}</caption>'
        f"<thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>"
    )


def with_namespace(path: str, keys: Keys | None, **more: str) -> str:
    query = {k: v for k, v in more.items() if v}
    if keys is not None:
        query = {"namespace": keys.namespace, **query}
    return path + ("?" + urlencode(query) if query else "")


def plan_href(plan_id: str, keys: Keys) -> str:
    """The page of one plan, in the namespace being read."""
    return with_namespace("/plans/" + quote(plan_id, safe=""), keys)


def layout(
    request: Request,
    title: str,
    body: str,
    *,
    keys: Keys | None = None,
    status: int = 200,
    csrf: str = "",
) -> HTMLResponse:
    links = "".join(
        f'<a href="{e(with_namespace(path, keys))}"'
        + (' aria-current="page"' if request.url.path == path else "")
        + f">{e(name)}</a>"
        for path, name in NAV
    )
    pages = [path for path, _ in NAV]
    namespace = namespace_switcher(request, keys, pages) if keys else ""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · fleettrace</title>"
        '<link rel="icon" href="/static/favicon.svg">'
        '<link rel="stylesheet" href="/static/vendor/uPlot.min.css">'
        '<link rel="stylesheet" href="/static/style.css">'
        '<script src="/static/vendor/uPlot.iife.min.js" defer></script>'
        '<script src="/static/app.js" defer></script></head>'
        f"<body><header><strong>fleettrace</strong><nav>{links}</nav>{namespace}</header>"
        f'<main id="main" data-csrf="{e(csrf)}"><h1>{e(title)}</h1>{body}</main></body></html>'
    )
    return HTMLResponse(page, status_code=status)


def problem(request: Request, title: str, message: str, status: int) -> HTMLResponse:
    return layout(request, title, f'<p class="error" role="alert">{e(message)}</p>', status=status)


def guarded(title: str, render: Callable[[Request], HTMLResponse]) -> Callable[..., Response]:
    """A page whose bad query string or unreachable server is a message, never a 500."""

    def page(request: Request) -> Response:
        try:
            queries.check_lengths(dict(request.query_params))
            return render(request)
        except QueryError as error:
            return problem(request, title, str(error), error.status)
        except (psycopg.Error, redis.RedisError, FleettraceError) as error:
            message, status = unavailable(error)
            return problem(request, title, message, status)

    return page


def page_routes(board: Dashboard) -> list[BaseRoute]:
    def cost(request: Request) -> HTMLResponse:
        given = dict(request.query_params)
        keys = board.keys(given.get("namespace"))
        by = queries.parse_choice("by", given.get("by"), queries.COST_GROUPS, "model")
        span = queries.parse_range(given)
        rows = queries.cost_table(board.database_url, keys.namespace, by, span, queries.MAX_LIMIT)
        api = {
            "namespace": keys.namespace,
            "by": by,
            "from": span.start.isoformat(),
            "to": span.end.isoformat(),
        }
        options = "".join(
            f'<option value="{e(k)}"{" selected" if k == by else ""}>{e(k)}</option>'
            for k in queries.COST_GROUPS
        )
        ranges = "".join(
            f'<option value="{e(k)}"{" selected" if k == span.label else ""}>last {e(k)}</option>'
            for k in queries.RANGES
        )
        # A call with several tags is a row under each: the total counts every call once.
        once = rows
        if by not in queries.ONCE_PER_CALL:
            once = queries.cost_table(
                board.database_url, keys.namespace, "provider", span, queries.MAX_LIMIT
            )
        total = sum(r["cost_usd"] or 0.0 for r in once)
        unpriced = sum(r["unpriced_calls"] for r in once)
        several = (
            '<p class="note">A call with several tags counts under each of them; the '
            "total above counts it once, and the chart draws one line per tag.</p>"
            if by not in queries.ONCE_PER_CALL
            else '<p class="note">The chart stacks the keys: its top edge is the total.</p>'
        )
        body = (
            '<form method="get" action="/cost" class="controls">'
            f'<input type="hidden" name="namespace" value="{e(keys.namespace)}">'
            f'<label>by <select name="by">{options}</select></label>'
            f'<label>range <select name="range">{ranges}</select></label>'
            "<button>Show</button></form>"
            f"<p>From {when(span.start.isoformat())} to {when(span.end.isoformat())}: "
            f'<span id="total-cost">{usd(total)}</span> USD priced, '
            f'<span id="unpriced-calls">{unpriced}</span> unpriced calls (not counted as zero).</p>'
            f'<p><a id="csv" href="{e("/api/cost.csv?" + urlencode(api))}" download>'
            "Download the table as CSV</a></p>"
            + several
            + f'<div id="cost-chart" data-api="{e("/api/cost/series?" + urlencode(api))}"'
            f' data-stacked="{"yes" if by in queries.ONCE_PER_CALL else "no"}"'
            ' role="img" aria-label="cost over time"></div>'
            + table(
                f"Cost by {by}",
                (
                    by,
                    "calls",
                    "priced calls",
                    "unpriced calls",
                    "cost (USD)",
                    "prompt tokens",
                    "completion tokens",
                ),
                (
                    (
                        e(r["key"] if r["key"] is not None else "(none)"),
                        e(r["calls"]),
                        e(r["priced_calls"]),
                        e(r["unpriced_calls"]),
                        usd(r["cost_usd"]),
                        e(r["prompt_tokens"]),
                        e(r["completion_tokens"]),
                    )
                    for r in rows
                ),
                "cost-table",
            )
        )
        return layout(request, "Cost", body, keys=keys)

    def dlq(request: Request) -> HTMLResponse:
        keys = board.keys(request.query_params.get("namespace"))
        token, new = csrf_token(request)
        # Dead letters are each shard's own (docs/scaling.md): a section per shard and group.
        shards = shard_keys(board.redis, keys, "reading the dead letters")
        sections = "".join(
            _dlq_group(board, shard, group, token) for shard in shards for group in GROUPS
        )
        response = layout(request, "Dead letters", sections, keys=keys, csrf=token)
        if new:
            set_csrf_cookie(response, token)
        return response

    async def replay(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return problem(request, "Replay", "the request body is too large", 413)
        form = parse_qs(body.decode(errors="replace"))
        refused = csrf_problem(request, (form.get(CSRF_FIELD) or [""])[0])
        if refused is not None:
            return problem(request, "Replay", refused, 403)
        namespace = (form.get("namespace") or [""])[0]
        group = (form.get("group") or [""])[0]
        ids = form.get("id") or []
        try:
            if group not in GROUPS:
                raise QueryError(f"group must be one of {', '.join(GROUPS)}")
            if not ids:
                raise QueryError("choose at least one dead letter to replay")
            shard = dead_letters.parse_shard((form.get("shard") or [""])[0])
            keys = (await run_in_threadpool(board.keys, namespace)).for_shard(shard)
            report = await run_in_threadpool(replay_report, board, keys, group, ids)
        except QueryError as error:
            return problem(request, "Replay", str(error), error.status)
        except (redis.RedisError, FleettraceError) as error:
            return problem(request, "Replay", unavailable(error)[0], 503)
        rows = [(e(i), "replayed") for i in report["replayed"]]
        rows += [(e(r["id"]), e("refused: " + r["reason"])) for r in report["refused"]]
        rows += [(e(i), "not found") for i in report["missing"]]
        page = (
            f'<p id="replay-summary">replayed {len(report["replayed"])}, refused '
            f"{len(report['refused'])}, not found {len(report['missing'])}</p>"
            + table("Replay", ("dead letter", "outcome"), rows, "replay-table")
            + f'<p><a href="{e(with_namespace("/dlq", keys))}">back to dead letters</a></p>'
        )
        return layout(request, "Replay", page, keys=keys)

    return [
        Route("/cost", guarded("Cost", cost)),
        Route("/dlq", guarded("Dead letters", dlq)),
        Route("/dlq/replay", replay, methods=["POST"]),
        Route("/login", login, methods=["GET", "POST"]),
    ]


def _dlq_group(board: Dashboard, keys: Keys, group: str, csrf: str) -> str:
    items, cursor = dead_letters.dead_letter_items(board.redis, keys, group, None, DLQ_PAGE)
    # Shard 0 keeps the names it had before shards; another shard's carry its number.
    name = group if keys.shard == 0 else f"{group}-{keys.shard}"
    title = group if keys.shard == 0 else f"{group}, shard {keys.shard}"
    rows = [
        (
            f'<input type="checkbox" name="id" value="{e(d["id"])}" '
            f'aria-label="select {e(d["id"])}">'
            if d["replayable"]
            else "",
            e(d["id"]),
            when(d["time"]),
            e(d["stream"]),
            e(d["kind"] or "entry"),
            f'<span class="reason">{e(d["reason"])}</span>',
        )
        for d in items
    ]
    more = f"<p>First {DLQ_PAGE} shown; the API pages through the rest.</p>" if cursor else ""
    return (
        f'<section class="dlq"><h2>{e(title)}</h2>'
        f'<form method="post" action="/dlq/replay" class="replay" id="replay-{e(name)}">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{e(csrf)}">'
        f'<input type="hidden" name="group" value="{e(group)}">'
        f'<input type="hidden" name="shard" value="{keys.shard}">'
        f'<input type="hidden" name="namespace" value="{e(keys.namespace)}">'
        + table(
            f"Dead letters of {title}",
            ("", "id", "time", "stream", "kind", "reason"),
            rows,
            f"dlq-{name}",
        )
        + more
        + ("<button>Replay selected</button>" if rows else "")
        + "</form></section>"
    )


async def login(request: Request) -> Response:
    """The token form; a right token sets the HttpOnly, SameSite=Strict cookie."""
    token = request.app.state.token
    if request.method == "POST":
        body = await request.body()
        given = (parse_qs(body[:MAX_BODY_BYTES].decode(errors="replace")).get("token") or [""])[0]
        if token and same_secret(given, token):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        return _login_form(request, "that is not the dashboard's token", 401)
    return _login_form(request, "", 200)


def _login_form(request: Request, message: str, status: int) -> HTMLResponse:
    said = f'<p class="error" role="alert">{e(message)}</p>' if message else ""
    body = (
        said + '<form method="post" action="/login"><label>Token '
        '<input type="password" name="token" autocomplete="current-password"></label>'
        "<button>Open</button></form>"
        "<p>The token is the value of FLEETTRACE_DASHBOARD_TOKEN where the dashboard runs.</p>"
    )
    return layout(request, "Sign in", body, status=status)
