"""FleettraceCallbackHandler with real langchain-core chains over langchain-openai's
ChatOpenAI talking to the local OpenAI-compatible server; rows read from PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from langchain_core.agents import AgentAction
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import Generation, LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

import fleettrace
from fleettrace.integrations import Call, FleettraceCallbackHandler
from tests.llm_servers import (
    CACHED_TOKENS,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    REASONING_TOKENS,
    LLMServer,
)


def chat(server: LLMServer, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o", base_url=server.openai_url, api_key="sk-test", max_retries=2, **kwargs
    )


def chain(server: LLMServer, **kwargs):
    prompt = ChatPromptTemplate.from_messages([("user", "Say hello to {name}")])
    return prompt | chat(server, **kwargs) | StrOutputParser()


@tool
def search(query: str) -> str:
    """Look something up."""
    return f"found {query}"


@tool
def broken(query: str) -> str:
    """Always fails."""
    raise RuntimeError("tool down")


def tool_samples(database_url: str) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT key, labels::text, plan_id FROM metric_samples WHERE key LIKE 'tool.%' "
            "ORDER BY key, labels::text"
        ).fetchall()
    return [(key, labels, plan) for key, labels, plan in rows]


def test_a_chain_in_a_runnable_config_is_a_plan_with_its_llm_call(server, pipeline) -> None:
    calls: list[Call] = []
    handler = FleettraceCallbackHandler(on_call=calls.append)
    server.fail(429, times=1, retry_after_ms="5")
    text = chain(server).invoke({"name": "Ada"}, config={"callbacks": [handler]})
    assert text == "Hello from the local server"
    [row] = pipeline.rows()
    assert (row["provider"], row["model"]) == ("openai", "gpt-4o-2024-08-06")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert (row["streaming"], row["error"], row["decision_id"]) == (False, None, None)
    assert row["actor"] == "RunnableSequence"
    assert len(row["plan_id"]) == 32
    assert row["cost_usd"] is not None
    [call] = calls
    assert (call.cache_read_tokens, call.reasoning_tokens) == (CACHED_TOKENS, REASONING_TOKENS)
    assert handler._runs == {}


def test_two_handlers_on_one_chain_record_it_once(server, pipeline) -> None:
    first, second = FleettraceCallbackHandler(), FleettraceCallbackHandler()
    chain(server).invoke({"name": "Gil"}, config={"callbacks": [first, second]})
    assert search.invoke({"query": "z"}, config={"callbacks": [first, second]}) == "found z"
    [row] = pipeline.rows()
    assert row["prompt_tokens"] == PROMPT_TOKENS
    with psycopg.connect(pipeline.database_url) as conn:
        keys = conn.execute("SELECT key FROM metric_samples ORDER BY key").fetchall()
    assert keys == [
        ("plan.duration_seconds",),
        ("tool.error_rate",),
        ("tool.invocation_duration_ms",),
    ]


def test_inside_fleettrace_scopes_the_handler_joins_them(server, pipeline) -> None:
    handler = FleettraceCallbackHandler()
    model = chat(server)
    with fleettrace.plan("plan-lc"), fleettrace.decision("d-lc"), fleettrace.actor("writer"):
        model.invoke("hi", config={"callbacks": [handler]})
        model.generate([[HumanMessage("a")], [HumanMessage("b")]], callbacks=[handler])
        tagged = chain(server).with_config(metadata={"fleettrace_actor": "greeter"})
    tagged.invoke({"name": "Bo"}, config={"callbacks": [handler]})
    rows = pipeline.rows()
    assert [(r["plan_id"], r["decision_id"], r["actor"]) for r in rows[:3]] == [
        ("plan-lc", "d-lc", "writer")
    ] * 3
    assert rows[3]["actor"] == "greeter"
    assert rows[3]["plan_id"] not in (None, "plan-lc")


def test_streaming_tool_calls_and_errors(server, pipeline) -> None:
    handler = FleettraceCallbackHandler()
    streamed = "".join(
        chain(server, stream_usage=True).stream({"name": "Cy"}, {"callbacks": [handler]})
    )
    assert streamed == "Hello from the local server"
    bound = chat(server).bind_tools([search])
    message = bound.invoke("look it up", config={"callbacks": [handler]})
    assert [c["name"] for c in message.tool_calls] == ["search"]
    server.fail(500, times=3, retry_after_ms="1")
    with pytest.raises(Exception, match="Error code: 500") as raised:
        chat(server).invoke("fail", config={"callbacks": [handler]})
    rows = pipeline.rows()
    assert [(r["streaming"], r["tool_calls"], (r["error"] or "").split(":")[0]) for r in rows] == [
        (True, [], ""),
        (False, ["search"], ""),
        (False, [], type(raised.value).__name__),  # what the chain raised to its caller
    ]
    assert rows[0]["prompt_tokens"] == PROMPT_TOKENS


def test_an_agent_action_starts_a_decision_for_the_runs_after_it(server, pipeline) -> None:
    handler = FleettraceCallbackHandler()
    model = chat(server)

    def agent(question: str, run_manager) -> str:
        # What an agent executor does: announce the action, then run under the agent's run.
        run_manager.on_agent_action(AgentAction("search", {"query": question}, "thinking"))
        return model.invoke(question, config={"callbacks": run_manager.get_child()}).content

    runnable = RunnableLambda(agent).with_config(metadata={"fleettrace_actor": "researcher"})
    assert (
        runnable.invoke("what?", config={"callbacks": [handler]}) == "Hello from the local server"
    )
    [row] = pipeline.rows()
    assert len(row["decision_id"]) == 32
    assert row["actor"] == "researcher"
    with psycopg.connect(pipeline.database_url) as conn:
        [(labels, plan_id)] = conn.execute(
            "SELECT labels::text, plan_id FROM metric_samples WHERE key = 'plan.decisions_count'"
        ).fetchall()
    assert (labels, plan_id) == (f'{{"plan": "{row["plan_id"]}"}}', row["plan_id"])


def test_tool_runs_are_tool_invocations_with_their_outcome(server, pipeline) -> None:
    handler = FleettraceCallbackHandler()
    with fleettrace.plan("plan-tools"):
        assert search.invoke({"query": "x"}, config={"callbacks": [handler]}) == "found x"
        with pytest.raises(RuntimeError):
            broken.invoke({"query": "x"}, config={"callbacks": [handler]})
    pipeline.rows()
    assert tool_samples(pipeline.database_url) == [
        ("tool.error_rate", '{"tool": "broken", "outcome": "error"}', "plan-tools"),
        ("tool.error_rate", '{"tool": "search", "outcome": "ok"}', "plan-tools"),
        ("tool.invocation_duration_ms", '{"tool": "broken"}', "plan-tools"),
        ("tool.invocation_duration_ms", '{"tool": "search"}', "plan-tools"),
    ]


def test_async_chains_record_through_the_handler(server, pipeline) -> None:
    handler = FleettraceCallbackHandler()

    async def agent() -> list[str]:
        steps = chain(server) | RunnableLambda(lambda text: text.upper())
        first = await steps.ainvoke({"name": "Di"}, config={"callbacks": [handler]})
        chunks = [
            c
            async for c in chain(server, stream_usage=True).astream(
                {"name": "Ed"}, {"callbacks": [handler]}
            )
        ]
        return [first, "".join(chunks)]

    assert asyncio.run(agent()) == ["HELLO FROM THE LOCAL SERVER", "Hello from the local server"]
    rows = pipeline.rows()
    assert [(r["streaming"], r["prompt_tokens"]) for r in rows] == [
        (False, PROMPT_TOKENS),
        (True, PROMPT_TOKENS),
    ]
    assert rows[0]["plan_id"] != rows[1]["plan_id"]


def test_unusual_runs_and_a_closed_emitter_never_raise_into_the_chain(server, pipeline) -> None:
    handler = FleettraceCallbackHandler(provider="local")
    failing = RunnableLambda(lambda _: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.invoke(1, config={"callbacks": [handler]})
    # An LLM (not chat) run whose usage comes in llm_output, as older integrations send it.
    run_id = uuid.uuid4()
    serialized = {"id": ["langchain", "llms", "LegacyLLM"]}
    handler.on_llm_start(serialized, ["hi"], run_id=run_id, invocation_params={"model": "m-1"})
    result = LLMResult(
        generations=[[Generation(text="x")]],
        llm_output={"token_usage": {"prompt_tokens": 7, "completion_tokens": 3}},
    )
    handler.on_llm_end(result, run_id=run_id)
    # Callbacks for runs never started, and a decision inside the caller's own.
    handler.on_llm_end(result, run_id=uuid.uuid4())
    handler.on_llm_error(RuntimeError("x"), run_id=uuid.uuid4())
    handler.on_agent_action(AgentAction("t", {}, ""), run_id=uuid.uuid4())
    with fleettrace.decision("mine"):
        handler.on_agent_action(AgentAction("t", {}, ""), run_id=run_id)
    rows = pipeline.rows()
    assert [
        (r["provider"], r["model"], r["prompt_tokens"], r["completion_tokens"]) for r in rows
    ] == [("local", "m-1", 7, 3)]
    with psycopg.connect(pipeline.database_url) as conn:
        plans = conn.execute(
            "SELECT count(*) FROM metric_samples WHERE key = 'plan.duration_seconds'"
        ).fetchone()
    assert plans == (1,)  # the failed root run still ended its plan

    pipeline.emitter.close()  # records now fail inside fleettrace, never in the chain
    closed = FleettraceCallbackHandler(emitter=pipeline.emitter)
    assert chain(server).invoke({"name": "Fy"}, config={"callbacks": [closed]})
    assert search.invoke({"query": "y"}, config={"callbacks": [closed]}) == "found y"
    agent_run = uuid.uuid4()
    closed.on_chain_start({}, {}, run_id=agent_run)
    closed.on_agent_action(AgentAction("t", {}, ""), run_id=agent_run)
    closed.on_chain_end({}, run_id=agent_run)
