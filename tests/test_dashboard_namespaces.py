"""Two namespaces' calls in one database: every figure the dashboard reads from
PostgreSQL (cost, its series and CSV, activity, performance, plans; the API and the
pages) is of the namespace asked (``?namespace=``, else the dashboard's own), equal to
the SQL sums filtered by that namespace."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from starlette.requests import Request

from fleettrace.keys import Keys
from fleettrace.plans import total_cost_usd
from fleettrace_worker.serve.dashboard.pages import usd
from fleettrace_worker.serve.dashboard.queries import encode_cursor
from fleettrace_worker.serve.dashboard.samples import SAMPLE_KEYS
from fleettrace_worker.serve.dashboard.switcher import target
from tests.dashboard_helpers import (
    api_cost_by,
    dashboard,
    fill_fleet,
    fill_other_namespace,
    get_json,
    request,
    rows,
    sql_cost_by,
)
from tests.worker_helpers import migrated

SQL_ENDPOINTS = (
    "/api/cost",
    "/api/cost.csv",
    "/api/cost/series",
    "/api/activity",
    "/api/performance",
    "/api/performance/series",
    "/api/performance/tools",
    "/api/performance/samples",
    "/api/plans",
    "/api/plans/plan-0/tree",
    f"/api/calls/{uuid.UUID(int=1)}",
)


@pytest.fixture
def other(redis_url: str) -> Iterator[Keys]:
    """A second namespace of this test; its keys are deleted afterwards."""
    ns = Keys(f"test-{uuid.uuid4().hex[:12]}")
    yield ns
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{ns.prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.mark.slow  # two fleets through the real pipeline
def test_every_sql_figure_is_of_the_namespace_asked(
    redis_url, keys, other, database_url, redis_client
) -> None:
    db = fill_fleet(redis_url, keys, database_url)
    fill_other_namespace(redis_url, other, db)
    totals = dict(rows(db, "SELECT namespace, sum(cost_usd) FROM llm_traces GROUP BY 1"))
    assert set(totals) == {keys.namespace, other.namespace}
    assert totals[keys.namespace] != totals[other.namespace]
    with dashboard(redis_url, keys, db) as base:
        for ns, asked in (
            (keys, ""),
            (keys, f"namespace={keys.namespace}"),
            (other, f"namespace={other.namespace}"),
        ):
            _api_figures_are_of(base, db, ns.namespace, asked)
            overview = get_json(f"{base}/api/overview?{asked}")[1]
            assert overview["namespace"] == ns.namespace
            assert overview["spend_usd"] == pytest.approx(total_cost_usd(redis_client, ns))
            _pages_are_of(base, db, ns.namespace, asked)
        _trees_and_calls_are_of_their_namespace(base, db, keys, other)
        for path in SQL_ENDPOINTS:
            assert get_json(f"{base}{path}?namespace=%3Cx%3E")[0] == 400
            status, answer = get_json(f"{base}{path}?namespace=nobody-{uuid.uuid4().hex[:8]}")
            assert (status, "unknown namespace" in answer["error"]) == (404, True)


def _trees_and_calls_are_of_their_namespace(base: str, db: str, keys: Keys, other: Keys) -> None:
    """A plan's tree and a call are read in the namespace asked, and only there."""
    for ns, stranger in ((keys, other), (other, keys)):
        [(plan, trace_id, calls)] = rows(
            db,
            "SELECT plan_id, min(trace_id::text), count(*) FROM llm_traces "
            "WHERE namespace = %s GROUP BY plan_id ORDER BY plan_id LIMIT 1",
            ns.namespace,
        )
        status, answer = get_json(f"{base}/api/plans/{plan}/tree?namespace={ns.namespace}")
        assert (status, answer["tree"]["calls"]) == (200, calls)
        assert get_json(f"{base}/api/calls/{trace_id}?namespace={ns.namespace}")[0] == 200
        for path in (f"/api/plans/{plan}/tree", f"/api/calls/{trace_id}", f"/calls/{trace_id}"):
            status, _, _ = request(f"{base}{path}?namespace={stranger.namespace}")
            assert status == 404, path


def _api_figures_are_of(base: str, db: str, namespace: str, asked: str) -> None:
    for by in ("model", "provider", "actor"):
        status, answer = get_json(f"{base}/api/cost?by={by}&range=24h&{asked}")
        assert status == 200
        assert api_cost_by(answer["items"]) == sql_cost_by(db, by, namespace)

    lines = request(f"{base}/api/cost.csv?by=provider&{asked}")[2].decode().splitlines()
    expected_csv = dict(
        rows(
            db,
            "SELECT provider, sum(cost_usd) FROM llm_traces WHERE namespace = %s GROUP BY 1",
            namespace,
        )
    )
    # An unpriced group's cost is an empty cell, never 0.
    cells = {line.split(",")[0]: line.split(",")[4] for line in lines[1:]}
    assert {k for k, v in cells.items() if not v} == {
        k for k, v in expected_csv.items() if v is None
    }
    got_csv = {k: float(v) for k, v in cells.items() if v}
    assert got_csv == pytest.approx({k: float(v) for k, v in expected_csv.items() if v is not None})

    [(calls, cost, priced, errors, retried)] = rows(
        db,
        "SELECT count(*), coalesce(sum(cost_usd), 0), count(cost_usd), count(error), "
        "count(*) FILTER (WHERE retry_count > 0) FROM llm_traces WHERE namespace = %s",
        namespace,
    )
    series = get_json(f"{base}/api/cost/series?by=model&range=1h&{asked}")[1]
    assert sum(item["calls"] for item in series["items"]) == calls
    assert sum(item["cost_usd"] for item in series["items"]) == pytest.approx(cost)

    activity = get_json(f"{base}/api/activity?{asked}")[1]["items"]
    # "today" from UTC midnight holds them too, unless the test runs across it.
    for item in (a for a in activity if a["window"] != "today"):
        assert item["calls"] == calls
        assert item["cost_usd"] == pytest.approx(cost)
        assert item["unpriced_calls"] == calls - priced
        assert item["error_rate"] == errors / calls
        assert item["retry_rate"] == retried / calls

    latency = get_json(f"{base}/api/performance?{asked}")[1]["items"]
    expected_latency = {
        model: (n, p50, p95)
        for model, n, p50, p95 in rows(
            db,
            "SELECT model, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) "
            "FROM llm_traces WHERE namespace = %s GROUP BY model",
            namespace,
        )
    }
    assert {m["key"]: (m["calls"], m["p50_ms"], m["p95_ms"]) for m in latency} == (expected_latency)
    steps = get_json(f"{base}/api/performance/series?range=1h&{asked}")[1]["items"]
    assert sum(item["calls"] for item in steps) == calls
    [(sampled,)] = rows(
        db,
        "SELECT count(*) FROM metric_samples WHERE namespace = %s AND key = ANY(%s)",
        namespace,
        list(SAMPLE_KEYS),
    )
    samples = get_json(f"{base}/api/performance/samples?range=1h&{asked}")[1]["items"]
    assert sum(item["samples"] for item in samples) == sampled

    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = get_json(f"{base}/api/plans?limit=2&cursor={cursor}&{asked}")[1]
        seen += page["items"]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    expected_plans = {
        plan: (n, None if cost is None else pytest.approx(float(cost)))
        for plan, n, cost in rows(
            db,
            "SELECT plan_id, count(*), sum(cost_usd) FROM llm_traces "
            "WHERE namespace = %s GROUP BY plan_id",
            namespace,
        )
    }
    assert {p["plan_id"]: (p["calls"], p["cost_usd"]) for p in seen} == (expected_plans)


def _pages_are_of(base: str, db: str, namespace: str, asked: str) -> None:
    """The pages show the same figures, and their links and charts keep the namespace."""
    [(cost, unpriced)] = rows(
        db,
        "SELECT coalesce(sum(cost_usd), 0), count(*) - count(cost_usd) FROM llm_traces "
        "WHERE namespace = %s",
        namespace,
    )
    body = request(f"{base}/cost?{asked}")[2].decode()
    assert f'<span id="total-cost">{usd(float(cost))}</span>' in body
    assert f'<span id="unpriced-calls">{unpriced}</span>' in body
    assert f"namespace={namespace}" in body.split('id="csv"')[1].split(">")[0]
    assert f"namespace={namespace}" in body.split('id="cost-chart"')[1].split(">")[0]
    chart = request(f"{base}/performance?{asked}")[2].decode().split('id="latency-chart"')[1]
    assert f"namespace={namespace}" in chart.split(">")[0]
    plans = {plan for (plan,) in rows(db, "SELECT DISTINCT plan_id FROM llm_traces")}
    mine = {
        plan
        for (plan,) in rows(
            db, "SELECT DISTINCT plan_id FROM llm_traces WHERE namespace = %s", namespace
        )
    }
    listed = request(f"{base}/plans?limit=500&{asked}")[2].decode()
    for plan in plans:
        assert (f">{html.escape(plan)}</a></td>" in listed) == (plan in mine), plan


def _switcher(page: str) -> tuple[str, str, list[tuple[str, str]]]:
    """The header switcher's action, namespace field and hidden fields (unescaped)."""
    [form] = re.findall(r'<form method="get" action="([^"]*)" class="ns"[^>]*>(.*?)</form>', page)
    [namespace] = re.findall(r'<input name="namespace" value="([^"]*)"', form[1])
    hidden = re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', form[1])
    unescaped = [(html.unescape(k), html.unescape(v)) for k, v in hidden]
    return html.unescape(form[0]), html.unescape(namespace), unescaped


def test_every_page_switches_namespace_keeping_its_other_parameters(
    redis_url, keys, other, database_url, redis_client
) -> None:
    db = migrated(database_url)
    redis_client.sadd(other.producers, "default")  # a namespace Redis knows
    hostile = '<b>x" onmouseover="y'
    asked = {
        "/": [],
        "/cost": [("by", "provider"), ("range", "7d")],
        "/performance": [("range", "1h")],
        "/plans": [("q", hostile), ("cursor", encode_cursor("plan-0")), ("status", "error")],
        "/dlq": [],
    }
    with dashboard(redis_url, keys, db) as base:
        for path, query in asked.items():
            status, _, body = request(f"{base}{path}?{urlencode(query)}")
            assert status == 200, (path, body[:300])
            page = body.decode()
            kept = [(k, v) for k, v in query if k != "cursor"]
            assert _switcher(page) == (path, keys.namespace, kept)
            assert hostile not in page
            # Submitting it: the same page and parameters, in the namespace typed.
            switched = urlencode([*kept, ("namespace", other.namespace)])
            status, _, body = request(f"{base}{path}?{switched}")
            assert status == 200, (path, body[:300])
            assert _switcher(body.decode()) == (path, other.namespace, kept)
        # A name Redis knows nothing of is the page's 404, with its message.
        status, _, body = request(f"{base}/cost?namespace=nobody-{uuid.uuid4().hex[:8]}")
        assert (status, b"unknown namespace" in body) == (404, True)


def test_a_plan_or_call_page_switches_to_its_section() -> None:
    def target_of(path: str, method: str = "GET") -> tuple[str, list[tuple[str, str]]]:
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "query_string": b"a=1",
            "headers": [],
        }
        return target(Request(scope), ["/", "/plans", "/dlq"])

    assert target_of("/plans/trip%2Fhotel") == ("/plans", [])
    assert target_of("/calls/00000000-0000-0000-0000-000000000001") == ("/plans", [])
    assert target_of("/dlq/replay", "POST") == ("/dlq", [])
    assert target_of("/plans") == ("/plans", [("a", "1")])
