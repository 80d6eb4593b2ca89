"""Two namespaces' calls in one database: every figure the dashboard reads from
PostgreSQL (cost, its series and CSV, activity, performance, plans; the API and the
pages) is of the namespace asked (``?namespace=``, else the dashboard's own), equal to
the SQL sums filtered by that namespace."""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fleettrace.keys import Keys
from fleettrace.plans import total_cost_usd
from fleettrace_worker.serve.dashboard.pages import usd
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

SQL_ENDPOINTS = (
    "/api/cost",
    "/api/cost.csv",
    "/api/cost/series",
    "/api/activity",
    "/api/performance",
    "/api/performance/series",
    "/api/performance/tools",
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

    for item in get_json(f"{base}/api/activity?{asked}")[1]["items"]:
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
