"""The Plans search, one plan's tree and waterfall, one call's details: pages and API.

``/plans`` and ``/api/plans`` search plans (:mod:`.plan_search`); ``/plans/{id}`` and
``/api/plans/{id}/tree`` read one plan's tree with
:class:`~fleettrace_worker.store.tree_queries.TreeQueries` (the reader of
``fleettrace traces tree``), ``/calls/{trace_id}`` and ``/api/calls/{trace_id}`` one
call and the nodes above it (its ``ancestors``). Each read is of the namespace asked.

A plan id travels in the path percent-encoded (agents choose them: ``/`` included);
an id longer than the model allows is a 400, a plan or call the namespace does not hold
a 404, a trace id that is not a UUID a 400.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from fleettrace.keys import Keys
from fleettrace.model import MAX_ID_CHARS, LLMTrace
from fleettrace_worker.serve.dashboard import queries
from fleettrace_worker.serve.dashboard.api import answer, params
from fleettrace_worker.serve.dashboard.context import Dashboard
from fleettrace_worker.serve.dashboard.pages import e, guarded, layout, plan_href, with_namespace
from fleettrace_worker.serve.dashboard.plan_search import (
    STATUSES,
    PlanSearch,
    parse_search,
    search_plans,
)
from fleettrace_worker.serve.dashboard.plan_view import (
    call_details,
    plan_summary,
    plans_table,
    tree_table,
)
from fleettrace_worker.serve.dashboard.queries import QueryError
from fleettrace_worker.store import database
from fleettrace_worker.store.tree_queries import Node, TreeQueries

#: How long a tree read waits for a connection before PostgreSQL counts as away.
CONNECT_WAIT_S: Final = 5.0


@contextmanager
def tree_reader(board: Dashboard, namespace: str) -> Iterator[TreeQueries]:
    """A TreeQueries of ``namespace`` on a pool of one connection for this request
    (the dashboard holds no pool between requests, as its other reads). PostgreSQL is
    reached once first, as every other read does: a server that is away is its one-line
    503 at once, where the pool would retry in the background until its wait ends."""
    queries.connect(board.database_url).close()
    pool = database.create_pool(
        board.database_url,
        min_size=1,
        max_size=1,
        timeout_s=CONNECT_WAIT_S,
        statement_timeout_ms=queries.STATEMENT_TIMEOUT_MS,
    )
    try:
        yield TreeQueries(pool, namespace=namespace)
    finally:
        pool.close()


def _plan_id(raw: str) -> str:
    if not raw or len(raw) > MAX_ID_CHARS or "\x00" in raw:
        raise QueryError(f"a plan id is 1 to {MAX_ID_CHARS} characters, got {queries.shown(raw)}")
    return raw


def _trace_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise QueryError(
            f"a trace id is a UUID such as 0190c3a2-7c1e-4b5a-9d3f-2b8e4f6a1c0d, got "
            f"{queries.shown(raw)}"
        ) from None


def read_tree(board: Dashboard, keys: Keys, plan_id: str) -> Node:
    with tree_reader(board, keys.namespace) as reader:
        tree = reader.tree(plan_id)
    if tree is None:
        raise QueryError(
            f"no plan {queries.shown(plan_id)} in namespace {queries.shown(keys.namespace)}",
            status=404,
        )
    return tree


def read_call(board: Dashboard, keys: Keys, trace_id: uuid.UUID) -> tuple[LLMTrace, list[Node]]:
    with tree_reader(board, keys.namespace) as reader:
        found = reader.ancestors(trace_id)
    if found is None:
        raise QueryError(
            f"no call {queries.shown(str(trace_id))} in namespace {queries.shown(keys.namespace)}",
            status=404,
        )
    return found


def jsonable(value: Any) -> Any:
    """A node's JSON (``Node.to_json``) with its times as ISO 8601 strings."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    return value


def call_json(trace: LLMTrace, ancestors: list[Node], namespace: str) -> dict[str, Any]:
    return {
        **trace.model_dump(mode="json"),
        "namespace": namespace,
        "ancestors": [{"kind": node.kind, "name": node.name} for node in ancestors],
    }


def _search_form(search: PlanSearch, keys: Keys) -> str:
    given = search.given()
    statuses = "".join(
        f'<option value="{e(s)}"{" selected" if s == search.status else ""}>{e(s)}</option>'
        for s in STATUSES
    )
    ranges = "".join(
        f'<option value="{e(k)}"{" selected" if k == search.span.label else ""}>last {e(k)}'
        "</option>"
        for k in queries.RANGES
    )
    fields = "".join(
        f'<label>{e(label)} <input name="{name}" value="{e(given.get(name, ""))}"{extra}></label>'
        for name, label, extra in (
            ("q", "plan id starts with", ""),
            ("tag", "tag", ""),
            ("user", "user", ""),
            ("min_cost", "cost from (USD)", ' inputmode="decimal" size="8"'),
            ("max_cost", "to", ' inputmode="decimal" size="8"'),
        )
    )
    return (
        '<form method="get" action="/plans" class="controls" id="plan-search">'
        f'<input type="hidden" name="namespace" value="{e(keys.namespace)}">{fields}'
        f'<label>status <select name="status">{statuses}</select></label>'
        f'<label>range <select name="range">{ranges}</select></label>'
        "<button>Search</button></form>"
    )


def plan_routes(board: Dashboard) -> list[BaseRoute]:
    def api_plans(request: Request) -> Response:
        def work() -> dict[str, Any]:
            given = params(request)
            keys = board.keys(given.get("namespace"))
            search = parse_search(given, keys.namespace)
            after = queries.decode_cursor(given.get("cursor"))
            limit = queries.parse_limit(given.get("limit"))
            items, cursor = search_plans(board.database_url, search, after=after, limit=limit)
            return {
                **queries.listing(items, cursor),
                "from": search.span.start.isoformat(),
                "to": search.span.end.isoformat(),
            }

        return answer(work)

    def api_tree(request: Request) -> Response:
        def work() -> dict[str, Any]:
            keys = board.keys(params(request).get("namespace"))
            plan_id = _plan_id(request.path_params["plan_id"])
            tree = read_tree(board, keys, plan_id)
            return {"namespace": keys.namespace, "tree": jsonable(tree.to_json())}

        return answer(work)

    def api_call(request: Request) -> Response:
        def work() -> dict[str, Any]:
            keys = board.keys(params(request).get("namespace"))
            trace, ancestors = read_call(board, keys, _trace_id(request.path_params["trace_id"]))
            return call_json(trace, ancestors, keys.namespace)

        return answer(work)

    def plans(request: Request) -> HTMLResponse:
        given = dict(request.query_params)
        keys = board.keys(given.get("namespace"))
        search = parse_search(given, keys.namespace)
        after = queries.decode_cursor(given.get("cursor"))
        limit = queries.parse_limit(given.get("limit"))
        items, cursor = search_plans(board.database_url, search, after=after, limit=limit)
        more = (
            '<p><a id="next" href="'
            + e(with_namespace("/plans", keys, **search.given(), cursor=cursor or ""))
            + '">next page</a></p>'
            if cursor
            else ""
        )
        body = _search_form(search, keys) + plans_table(items, keys) + more
        return layout(request, "Plans", body, keys=keys)

    def plan(request: Request) -> HTMLResponse:
        keys = board.keys(request.query_params.get("namespace"))
        plan_id = _plan_id(request.path_params["plan_id"])
        tree = read_tree(board, keys, plan_id)
        root = tree.detail.get("root_plan_id")
        above = (
            f'<p>In the tree of <a id="root-link" href="{e(plan_href(root, keys))}">'
            f"{e(root)}</a>.</p>"
            if root and root != plan_id
            else ""
        )
        api = with_namespace(f"/api/plans/{quote(plan_id, safe='')}/tree", keys)
        body = (
            plan_summary(tree)
            + above
            + tree_table(tree, keys)
            + f'<p><a href="{e(api)}">this tree as JSON</a> · '
            f'<a href="{e(with_namespace("/plans", keys))}">all plans</a></p>'
        )
        return layout(request, f"Plan {plan_id}", body, keys=keys)

    def call(request: Request) -> HTMLResponse:
        keys = board.keys(request.query_params.get("namespace"))
        trace, ancestors = read_call(board, keys, _trace_id(request.path_params["trace_id"]))
        body = call_details(trace, ancestors, keys) + (
            f'<p><a href="{e(with_namespace(f"/api/calls/{trace.trace_id}", keys))}">'
            "this call as JSON</a></p>"
        )
        return layout(request, f"Call {trace.provider}/{trace.model}", body, keys=keys)

    return [
        Route("/api/plans", api_plans),
        Route("/api/plans/{plan_id:path}/tree", api_tree),
        Route("/api/calls/{trace_id}", api_call),
        Route("/plans", guarded("Plans", plans)),
        Route("/plans/{plan_id:path}", guarded("Plan", plan)),
        Route("/calls/{trace_id}", guarded("Call", call)),
    ]
