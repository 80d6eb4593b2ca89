"""The LangChain handler's records in the plan tree: tool runs become tool calls, and a
chain's calls and tools read back as one tree, under an open fleettrace plan or as a
plan the handler opened itself; rows read from PostgreSQL through the persist loop."""

from __future__ import annotations

import psycopg
import pytest
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

import fleettrace
from fleettrace.integrations import FleettraceCallbackHandler
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.tree_queries import TreeQueries
from tests.test_integrations_langchain import broken, chat, search


def _tools(database_url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT tool, plan_id, outcome, error, root_plan_id, plan_path FROM tool_calls "
            "ORDER BY tool"
        ).fetchall()


def test_tool_runs_become_tool_calls_in_the_open_plans_tree(server, pipeline) -> None:
    handler = FleettraceCallbackHandler()
    with fleettrace.plan("outer"), fleettrace.plan("plan-tools"):
        assert search.invoke({"query": "x"}, config={"callbacks": [handler]}) == "found x"
        with pytest.raises(RuntimeError):
            broken.invoke({"query": "x"}, config={"callbacks": [handler]})
    pipeline.rows()
    assert _tools(pipeline.database_url) == [
        ("broken", "plan-tools", "error", "RuntimeError: tool down", "outer", ["outer"]),
        ("search", "plan-tools", "ok", None, "outer", ["outer"]),
    ]


def test_a_chain_of_its_own_is_a_tree_with_its_plan_record(server, pipeline) -> None:
    handler = FleettraceCallbackHandler()
    prompt = ChatPromptTemplate.from_messages([("user", "Say hello to {name}")])
    steps = prompt | chat(server) | RunnableLambda(lambda m: search.invoke({"query": m.content}))
    assert steps.invoke({"name": "Ada"}, config={"callbacks": [handler]}).startswith("found")
    [row] = pipeline.rows()
    plan_id = row["plan_id"]
    assert (row["root_plan_id"], row["plan_path"]) == (plan_id, [])
    with create_pool(pipeline.database_url, min_size=1, max_size=1) as pool:
        tree = TreeQueries(pool).tree(plan_id)
    assert tree is not None
    assert tree.detail["status"] == "ok"
    assert (tree.calls, tree.tool_calls) == (1, 1)
    assert tree.cost_usd is not None and tree.cost_usd > 0
