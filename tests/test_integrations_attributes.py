"""Time to first token and scope attributes through the integrations: the real openai,
anthropic and LangChain clients against the local LLM servers, ttft and attributes
read back from the rows the worker stored in PostgreSQL."""

from __future__ import annotations

import asyncio

import anthropic
import openai
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

import fleettrace
from fleettrace.integrations import FleettraceCallbackHandler, wrap_anthropic, wrap_openai
from tests.llm_servers import LLMServer

MESSAGES = [{"role": "user", "content": "hi"}]
SCOPE = {"tags": ["prod"], "metadata": {"team": "search"}, "user_id": "u-1", "session_id": "s-1"}


def _attributes(row: dict) -> tuple:
    return row["tags"], row["metadata"], row["user_id"], row["session_id"]


def test_openai_streams_store_ttft_and_the_scope_attributes(server: LLMServer, pipeline) -> None:
    wrapped = wrap_openai(openai.OpenAI(base_url=server.openai_url, api_key="sk-test"))
    with fleettrace.plan(**SCOPE), fleettrace.actor("a", tags=["stream"]):
        list(wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
        wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    streamed, plain = sorted(pipeline.rows(), key=lambda r: not r["streaming"])
    assert streamed["streaming"] and streamed["ttft_ms"] is not None
    assert 0 < streamed["ttft_ms"] <= streamed["latency_ms"]
    assert plain["ttft_ms"] is None
    for row in (streamed, plain):
        assert _attributes(row) == (["prod", "stream"], {"team": "search"}, "u-1", "s-1")


def test_an_async_openai_stream_ending_in_another_context_keeps_its_scope(
    server: LLMServer, pipeline
) -> None:
    wrapped = wrap_openai(openai.AsyncOpenAI(base_url=server.openai_url, api_key="sk-test"))

    async def main() -> None:
        with fleettrace.plan(tags=["async"], user_id="u-2"):
            stream = await wrapped.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True
            )
        async for _ in stream:  # read outside the scope
            pass

    asyncio.run(main())
    [row] = pipeline.rows()
    assert (row["tags"], row["user_id"]) == (["async"], "u-2")
    assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["latency_ms"]


def test_anthropic_streams_store_ttft_and_attributes(server: LLMServer, pipeline) -> None:
    wrapped = wrap_anthropic(
        anthropic.Anthropic(base_url=server.anthropic_url, api_key="sk-ant-test")
    )
    with (
        fleettrace.decision(**SCOPE),
        wrapped.messages.stream(
            model="claude-3-5-sonnet-latest", max_tokens=64, messages=MESSAGES
        ) as stream,
    ):
        "".join(stream.text_stream)
    [row] = pipeline.rows()
    assert row["streaming"] and row["ttft_ms"] is not None
    assert 0 < row["ttft_ms"] <= row["latency_ms"]
    assert _attributes(row) == (["prod"], {"team": "search"}, "u-1", "s-1")


def test_langchain_marks_ttft_at_the_first_new_token(server: LLMServer, pipeline) -> None:
    handler = FleettraceCallbackHandler()
    model = ChatOpenAI(
        model="gpt-4o", base_url=server.openai_url, api_key="sk-test", stream_usage=True
    )
    with fleettrace.actor("lc", metadata={"chain": "hello"}, session_id="s-9"):
        list(model.stream([HumanMessage("hi")], {"callbacks": [handler]}))
        model.invoke([HumanMessage("hi")], {"callbacks": [handler]})
    streamed, plain = sorted(pipeline.rows(), key=lambda r: not r["streaming"])
    assert streamed["streaming"] and streamed["ttft_ms"] is not None
    assert 0 < streamed["ttft_ms"] <= streamed["latency_ms"]
    assert plain["ttft_ms"] is None
    for row in (streamed, plain):
        assert (row["metadata"], row["session_id"]) == ({"chain": "hello"}, "s-9")
