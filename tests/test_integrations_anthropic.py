"""wrap_anthropic with the real anthropic client against the local server; every test
reads the rows the worker stored in PostgreSQL."""

from __future__ import annotations

import asyncio

import anthropic
import pytest

import fleettrace
from fleettrace.integrations import Call, unwrap, wrap_anthropic
from tests.llm_servers import (
    ANTHROPIC_CACHE_READ,
    ANTHROPIC_CACHE_WRITE,
    ANTHROPIC_INPUT,
    ANTHROPIC_OUTPUT,
    LLMServer,
)

MODEL = "claude-3-5-sonnet-latest"
SERVED = "claude-3-5-sonnet-20241022"
MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [{"name": "search", "input_schema": {"type": "object"}}]
WHOLE_INPUT = ANTHROPIC_INPUT + ANTHROPIC_CACHE_READ + ANTHROPIC_CACHE_WRITE


def client(server: LLMServer, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.anthropic_url, api_key="sk-ant-test", **kwargs)


def create(some_client, **kwargs):
    return some_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, **kwargs)


def test_a_message_is_stored_with_the_whole_input_and_its_tool_calls(server, pipeline) -> None:
    bare = create(client(server), tools=TOOLS)
    calls: list[Call] = []
    wrapped = wrap_anthropic(client(server), on_call=calls.append)
    with fleettrace.plan("plan-a"), fleettrace.actor("writer"):
        answer = create(wrapped, tools=TOOLS)
    assert answer.model_dump() == bare.model_dump()
    [row] = pipeline.rows()
    assert (row["provider"], row["model"], row["plan_id"], row["actor"]) == (
        "anthropic",
        SERVED,
        "plan-a",
        "writer",
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == (WHOLE_INPUT, ANTHROPIC_OUTPUT)
    assert (row["tool_calls"], row["streaming"], row["error"]) == (["search"], False, None)
    assert row["cost_usd"] is not None
    [call] = calls
    assert (call.cache_read_tokens, call.cache_write_tokens) == (
        ANTHROPIC_CACHE_READ,
        ANTHROPIC_CACHE_WRITE,
    )


def test_a_raw_stream_looks_as_unwrapped_and_takes_usage_from_start_and_delta(
    server, pipeline
) -> None:
    bare = [e.model_dump() for e in create(client(server), stream=True, tools=TOOLS)]
    wrapped = wrap_anthropic(client(server))
    seen = [e.model_dump() for e in create(wrapped, stream=True, tools=TOOLS)]
    assert seen == bare
    with wrapped.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello from the local server"
    rows = pipeline.rows()
    assert [(r["streaming"], r["tool_calls"], r["model"]) for r in rows] == [
        (True, ["search"], SERVED),
        (True, [], SERVED),
    ]
    assert {(r["prompt_tokens"], r["completion_tokens"]) for r in rows} == {
        (WHOLE_INPUT, ANTHROPIC_OUTPUT)
    }


def test_a_stream_closed_after_message_start_keeps_the_usage_it_had(server, pipeline) -> None:
    wrapped = wrap_anthropic(client(server))
    with create(wrapped, stream=True) as stream:
        assert next(iter(stream)).type == "message_start"
    [row] = pipeline.rows()
    # message_start states the whole input and the output so far (1); message_delta,
    # with the final output count, never came.
    assert (row["prompt_tokens"], row["completion_tokens"], row["streaming"]) == (
        WHOLE_INPUT,
        1,
        True,
    )


def test_retries_errors_and_malformed_events_are_stored(server, pipeline) -> None:
    wrapped = wrap_anthropic(client(server, max_retries=2))
    server.fail(429, times=1, retry_after_ms="5")
    create(wrapped)
    server.fail(500, times=3, retry_after_ms="1")
    with pytest.raises(anthropic.InternalServerError):
        create(wrapped)
    server.malformed_next()
    with pytest.raises(ValueError):  # json.JSONDecodeError, as the bare client raises
        list(create(wrapped, stream=True))
    rows = pipeline.rows()
    assert [(r["retry_count"], (r["error"] or "").split(":")[0]) for r in rows] == [
        (1, ""),
        (2, "InternalServerError"),
        (0, "JSONDecodeError"),
    ]


def test_async_messages_plain_and_streamed(server, pipeline) -> None:
    async def agent() -> str:
        wrapped = wrap_anthropic(
            anthropic.AsyncAnthropic(base_url=server.anthropic_url, api_key="sk-ant-test")
        )
        with fleettrace.decision("d-async"):
            await wrapped.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)
            stream = await wrapped.messages.create(
                model=MODEL, max_tokens=8, messages=MESSAGES, stream=True
            )
            kinds = [event.type async for event in stream]
        unwrap(wrapped)
        await wrapped.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)
        return ",".join(kinds)

    kinds = asyncio.run(agent())
    assert kinds.startswith("message_start") and kinds.endswith("message_stop")
    rows = pipeline.rows()
    assert [(r["streaming"], r["decision_id"], r["prompt_tokens"]) for r in rows] == [
        (False, "d-async", WHOLE_INPUT),
        (True, "d-async", WHOLE_INPUT),
    ]
