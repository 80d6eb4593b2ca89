"""The Plans search, one plan's tree, one call's details and cost by tag and user, over
HTTP against a dashboard on a free port; the plans come through the real pipeline
(tests/dashboard_helpers.fill_plan_tree). The same pages in a browser:
test_dashboard_browser.py."""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tests.dashboard_helpers import (
    TREE_CHILD,
    TREE_OTHER,
    TREE_ROOT,
    api_cost_by,
    dashboard,
    fill_plan_tree,
    get_json,
    request,
    rows,
    sql_cost_by,
)
from tests.servers import free_port
from tests.worker_helpers import migrated


def _plan_figures(db: str, where: str = "TRUE", *args: object) -> dict[str, tuple[Any, ...]]:
    """Per plan, from the rows: calls, priced calls, cost or None, tokens, errors."""
    return {
        plan: (calls, priced, None if cost is None else pytest.approx(float(cost)), p, c, errors)
        for plan, calls, priced, cost, p, c, errors in rows(
            db,
            "SELECT plan_id, count(*), count(cost_usd), sum(cost_usd), sum(prompt_tokens), "
            f"sum(completion_tokens), count(error) FROM llm_traces WHERE {where} "
            "GROUP BY plan_id",
            *args,
        )
    }


def _subtree_plans(node: dict[str, Any]) -> list[str]:
    found = [node["name"]] if node["kind"] == "plan" else []
    for child in node["children"]:
        found += _subtree_plans(child)
    return found


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node["children"] for n in _nodes(child))]


def test_plans_search_tree_call_and_cost_by_tag_are_the_stored_rows(
    redis_url, keys, database_url
) -> None:
    db = migrated(database_url)
    fill_plan_tree(redis_url, keys, db)
    with dashboard(redis_url, keys, db) as base:

        def search(**asked: str) -> dict[str, tuple[Any, ...]]:
            status, page = get_json(f"{base}/api/plans?{urlencode(asked)}")
            assert status == 200, page
            assert page["next_cursor"] is None
            return {
                p["plan_id"]: (
                    p["calls"],
                    p["priced_calls"],
                    p["cost_usd"],
                    p["prompt_tokens"],
                    p["completion_tokens"],
                    p["errors"],
                )
                for p in page["items"]
            }

        # Every filter selects what the same condition on the rows selects.
        everything = _plan_figures(db)
        assert set(everything) == {TREE_ROOT, TREE_CHILD, TREE_OTHER}
        assert search() == everything
        assert search(q="trip") == {p: everything[p] for p in (TREE_ROOT, TREE_CHILD)}
        tagged = _plan_figures(db, "'prod' = ANY(tags)")
        assert search(tag="prod") == tagged and TREE_OTHER not in tagged
        assert search(user="bob") == _plan_figures(db, "user_id = 'bob'") != {}
        failed = {p for p, f in everything.items() if f[-1]}
        assert set(search(status="error")) == failed == {TREE_CHILD}
        assert set(search(status="ok")) == set(everything) - failed
        assert set(search(min_cost="0.1")) == {TREE_OTHER}
        assert set(search(max_cost="0.1")) == {TREE_ROOT, TREE_CHILD}
        assert set(search(min_cost="0.015", max_cost="0.1")) == {TREE_CHILD}
        assert search(tag="prod", status="error", user="bob") == {TREE_CHILD: tagged[TREE_CHILD]}
        assert search(**{"from": "2020-01-01T00:00:00Z", "to": "2020-02-01T00:00:00Z"}) == {}
        # The child plan has an unpriced call: counted beside its priced sum.
        assert everything[TREE_CHILD][1] < everything[TREE_CHILD][0]

        # The tree: every plan node's figures are its subtree's rows; each call its row.
        status, answer = get_json(f"{base}/api/plans/{TREE_ROOT}/tree")
        assert status == 200, answer
        tree = answer["tree"]
        assert [c["name"] for c in tree["children"]] == [TREE_CHILD, "d-1"]
        for node in _nodes(tree):
            if node["kind"] == "plan":
                plans = _subtree_plans(node)
                [(calls, priced, cost, prompt, completion)] = rows(
                    db,
                    "SELECT count(*), count(cost_usd), sum(cost_usd), sum(prompt_tokens), "
                    "sum(completion_tokens) FROM llm_traces WHERE plan_id = ANY(%s)",
                    plans,
                )
                [(tools,)] = rows(
                    db, "SELECT count(*) FROM tool_calls WHERE plan_id = ANY(%s)", plans
                )
                assert (node["calls"], node["unpriced_calls"], node["tool_calls"]) == (
                    calls,
                    calls - priced,
                    tools,
                )
                assert node["cost_usd"] == pytest.approx(float(cost))
                assert (node["prompt_tokens"], node["completion_tokens"]) == (prompt, completion)
            if node["kind"] == "llm":
                [(cost, prompt, error)] = rows(
                    db,
                    "SELECT cost_usd, prompt_tokens, error FROM llm_traces WHERE trace_id = %s",
                    uuid.UUID(node["trace_id"]),
                )
                assert node["cost_usd"] == (None if cost is None else pytest.approx(float(cost)))
                assert (node["prompt_tokens"], node["error"]) == (prompt, error)
        assert tree["errors"] == 2  # the failed call and the failed tool
        child = get_json(f"{base}/api/plans/{quote(TREE_CHILD, safe='')}/tree")[1]["tree"]
        assert child == tree["children"][0]

        # One call's details, and the nodes above it.
        calls = {n["model"]: n["trace_id"] for n in _nodes(tree) if n["kind"] == "llm"}
        status, call = get_json(f"{base}/api/calls/{calls['gpt-4o']}")
        assert status == 200, call
        assert (call["provider"], call["model"], call["cost_usd"]) == ("openai", "gpt-4o", 0.0125)
        assert (call["cache_read_tokens"], call["cache_write_tokens"], call["ttft_ms"]) == (
            400,
            100,
            120.0,
        )
        assert (call["retry_count"], call["streaming"], call["user_id"]) == (1, True, "alice")
        assert set(call["tags"]) == {"prod", "search"} and call["metadata"] == {"tier": 2}
        assert call["ancestors"] == [
            {"kind": "plan", "name": TREE_ROOT},
            {"kind": "decision", "name": "d-1"},
            {"kind": "actor", "name": "planner"},
        ]
        unpriced = get_json(f"{base}/api/calls/{calls['house-llm']}")[1]
        assert (unpriced["cost_usd"], unpriced["error"]) == (None, "RateLimitError: slow down")
        page = request(f"{base}/calls/{calls['house-llm']}")[2].decode()
        assert "<dt>cost (USD)</dt><dd>unpriced</dd>" in page
        page = request(f"{base}/plans/{quote(TREE_CHILD, safe='')}")[2].decode()
        assert "trip/hotel &lt;i&gt;" in page and "<i>" not in page

        # Cost by user and by tag: table, CSV and SQL agree; unpriced counted, not 0.
        by_user = get_json(f"{base}/api/cost?by=user")[1]["items"]
        assert api_cost_by(by_user) == sql_cost_by(db, "user_id")
        expected: dict[str | None, list[Any]] = defaultdict(lambda: [0, 0, None])
        for tags, cost in rows(db, "SELECT tags, cost_usd FROM llm_traces"):
            for tag in tags or [None]:
                figures = expected[tag]
                figures[0] += 1
                if cost is not None:
                    figures[1] += 1
                    figures[2] = (figures[2] or 0) + float(cost)
        by_tag = get_json(f"{base}/api/cost?by=tag")[1]["items"]
        assert {i["key"]: [i["calls"], i["priced_calls"], i["cost_usd"]] for i in by_tag} == {
            k: [c, p, None if v is None else pytest.approx(v)] for k, (c, p, v) in expected.items()
        }
        status, _, body = request(f"{base}/api/cost.csv?by=tag")
        table = list(csv.DictReader(io.StringIO(body.decode())))
        assert {r["tag"]: (int(r["calls"]), r["cost_usd"]) for r in table} == {
            i["key"] or "": (i["calls"], "" if i["cost_usd"] is None else str(i["cost_usd"]))
            for i in by_tag
        }
        page = request(f"{base}/cost?by=tag")[2].decode()
        [(total, unpriced_calls)] = rows(
            db, "SELECT sum(cost_usd), count(*) - count(cost_usd) FROM llm_traces"
        )
        assert f'<span id="total-cost">{float(total):.6f}</span>' in page
        assert f'<span id="unpriced-calls">{unpriced_calls}</span>' in page

        # Performance: time to first token per model and tool error rates are the rows'.
        latency = get_json(f"{base}/api/performance")[1]["items"]
        assert {
            m["key"]: (m["ttft_calls"], m["ttft_p50_ms"], m["ttft_p95_ms"]) for m in latency
        } == {
            model: (n, p50, p95)
            for model, n, p50, p95 in rows(
                db,
                "SELECT model, count(ttft_ms), "
                "percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms) "
                "FROM llm_traces GROUP BY model",
            )
        }
        assert {m["key"]: m["ttft_p50_ms"] for m in latency}["gpt-4o"] == 120.0
        steps = get_json(f"{base}/api/performance/series?range=1h")[1]["items"]
        assert [s["ttft_p95_ms"] for s in steps if s["ttft_p95_ms"] is not None] == [120.0]
        status, tools = get_json(f"{base}/api/performance/tools?range=1h")
        assert status == 200 and tools["next_cursor"] is None
        expected_tools = {
            tool: (calls, errors, errors / calls, p95)
            for tool, calls, errors, p95 in rows(
                db,
                "SELECT tool, count(*), count(*) FILTER (WHERE outcome = 'error'), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) "
                "FROM tool_calls WHERE namespace = %s GROUP BY tool",
                keys.namespace,
            )
        }
        assert expected_tools["book"][:3] == (1, 1, 1.0)
        assert expected_tools["search"][:3] == (1, 0, 0.0)
        assert {
            t["key"]: (t["calls"], t["errors"], t["error_rate"], t["p95_ms"])
            for t in tools["items"]
        } == expected_tools
        page = request(f"{base}/performance?range=1h")[2].decode()
        assert 'id="ttft-chart"' in page and 'id="tool-table"' in page
        assert "<td>book</td><td>1</td><td>1</td><td>100.0 %</td>" in page
        status, refused = get_json(f"{base}/api/performance/tools?range=5y")
        assert (status, "range must be one of" in refused["error"]) == (400, True)


BAD_QUERIES = [
    ("/api/plans?min_cost=cheap", 400, "min_cost must be a cost in USD"),
    ("/api/plans?max_cost=-1", 400, "max_cost must be a cost in USD"),
    ("/api/plans?min_cost=nan", 400, "min_cost must be a cost in USD"),
    ("/api/plans?min_cost=2&max_cost=1", 400, "the cost range is reversed"),
    ("/api/plans?status=%3Cscript%3Ealert(1)%3C/script%3E", 400, "status must be one of"),
    ("/api/plans?tag=" + "t" * 300, 400, "longer than 200"),
    ("/api/plans?user=a%00b", 400, "user must not contain a NUL character"),
    ("/api/plans?q=%00", 400, "q must not contain a NUL character"),
    ("/api/plans?range=forever", 400, "range must be one of"),
    ("/api/plans/%3Cscript%3Eno-such-plan%3C%2Fscript%3E/tree", 404, "no plan"),
    ("/api/plans/" + "p" * 129 + "/tree", 400, "a plan id is 1 to 128 characters"),
    ("/api/calls/%3Cscript%3E", 400, "a trace id is a UUID"),
    (f"/api/calls/{uuid.UUID(int=7)}", 404, "no call"),
    ("/api/cost?by=tags", 400, "by must be one of model, provider, actor, tag, user"),
]


def _page_of(query: str) -> str:
    return query.replace("/api/", "/", 1).removesuffix("/tree").replace("/tree?", "?")


def test_bad_plan_and_call_queries_are_a_4xx_with_a_clear_message(
    redis_url, keys, database_url
) -> None:
    """The API answers 4xx JSON; the page of the same query the message, escaped."""
    db = migrated(database_url)
    with dashboard(redis_url, keys, db) as base:
        for query, status, message in BAD_QUERIES:
            got, answer = get_json(base + query)
            assert (got, query) == (status, query)
            assert message in answer["error"], query
            page = _page_of(query)
            got_page, headers, body = request(base + page)
            assert (got_page, page) == (status, page)
            assert message.encode() in body, page
            assert b"<script>" not in body.replace(b'<script src="/static/', b"")
            assert headers["content-type"].startswith("text/html")


def test_plan_pages_say_postgresql_is_away_at_once(redis_url, keys) -> None:
    away = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    with dashboard(redis_url, keys, away) as base:
        for path in ("/api/plans", "/api/plans/p/tree", f"/api/calls/{uuid.UUID(int=3)}"):
            status, answer = get_json(base + path)
            assert (status, path) == (503, path)
            assert answer["error"].startswith("PostgreSQL unavailable: "), path
            status, _, page = request(base + path.replace("/api/", "/").removesuffix("/tree"))
            assert status == 503
            assert b"PostgreSQL unavailable" in page
