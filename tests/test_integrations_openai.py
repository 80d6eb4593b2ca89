"""wrap_openai with the real openai client against a local OpenAI-compatible server;
every test reads the rows the worker stored in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import subprocess
import sys
import threading
from datetime import UTC, datetime

import openai
import pytest
from genai_prices import Usage, calc_price

import fleettrace
import fleettrace.integrations
from fleettrace.integrations import Call, is_wrapped, unwrap, wrap_openai
from fleettrace.integrations._clients import Wrapping, wrap_client
from fleettrace.integrations.openai import OpenAIAdapter
from tests.llm_servers import (
    CACHED_TOKENS,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    REASONING_TOKENS,
    LLMServer,
)

MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("search", "read_file")
]


def client(server: LLMServer, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key="sk-test", **kwargs)


def aclient(server: LLMServer, **kwargs) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.openai_url, api_key="sk-test", **kwargs)


def dumps(items) -> list[dict]:
    return [item.model_dump() for item in items]


def test_a_chat_completion_is_stored_with_the_served_model_usage_and_scopes(
    server, pipeline
) -> None:
    bare = client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    wrapped = wrap_openai(client(server))
    with fleettrace.plan("plan-1"), fleettrace.decision("d-1"), fleettrace.actor("planner"):
        answer = wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert type(answer) is type(bare)
    assert answer.model_dump() == bare.model_dump()
    [row] = pipeline.rows()
    assert (row["plan_id"], row["decision_id"], row["actor"]) == ("plan-1", "d-1", "planner")
    assert (row["provider"], row["model"]) == ("openai", "gpt-4o-2024-08-06")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert (row["streaming"], row["retry_count"], row["error"]) == (False, 0, None)
    assert row["tool_calls"] == []
    assert row["latency_ms"] > 0
    # The cached part of the prompt is stored and priced at the cache-read rate, as
    # genai-prices prices it (the whole prompt at the input rate would be 0.006).
    assert row["cache_read_tokens"] == CACHED_TOKENS
    expected = calc_price(
        Usage(
            input_tokens=PROMPT_TOKENS,
            cache_read_tokens=CACHED_TOKENS,
            output_tokens=COMPLETION_TOKENS,
        ),
        model_ref="gpt-4o-2024-08-06",
        provider_id="openai",
    ).total_price
    assert row["cost_usd"] == pytest.approx(float(expected))
    assert row["cost_usd"] < 1200 * 2.5e-6 + 300 * 10e-6


def test_tool_calls_the_model_requested_are_stored_by_name(server, pipeline) -> None:
    wrapped = wrap_openai(client(server))
    answer = wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS)
    assert [c.function.name for c in answer.choices[0].message.tool_calls] == [
        "search",
        "read_file",
    ]
    [row] = pipeline.rows()
    assert row["tool_calls"] == ["search", "read_file"]


def test_the_retries_the_client_made_are_counted(server, pipeline) -> None:
    server.fail(429, times=2, retry_after_ms="10")
    wrapped = wrap_openai(client(server, max_retries=3))
    answer = wrapped.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.model == "gpt-4o-mini-2024-07-18"
    assert len(server.requests) == 3
    [row] = pipeline.rows()
    assert (row["retry_count"], row["error"], row["prompt_tokens"]) == (2, None, PROMPT_TOKENS)


@pytest.mark.parametrize(
    ("status", "times", "error_type", "retries"),
    [(500, 3, openai.InternalServerError, 2), (400, 1, openai.BadRequestError, 0)],
)
def test_a_failed_call_raises_what_the_client_raises_and_is_stored_with_its_error(  # noqa: PLR0917
    server, pipeline, status, times, error_type, retries
) -> None:
    server.fail(status, times=times, retry_after_ms="1")
    wrapped = wrap_openai(client(server, max_retries=2))
    with pytest.raises(error_type) as raised, fleettrace.actor("coder"):
        wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert raised.value.status_code == status
    [row] = pipeline.rows()
    assert row["error"].startswith(f"{error_type.__name__}: Error code: {status}")
    assert (row["retry_count"], row["actor"], row["model"]) == (retries, "coder", "gpt-4o")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        None,
        None,
    )  # no usage: unknown, not zero


def test_a_stream_looks_as_unwrapped_and_is_stored_with_the_usage_asked_for(
    server, pipeline
) -> None:
    bare = dumps(
        client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    )
    calls: list[Call] = []
    wrapped = wrap_openai(client(server), on_call=calls.append)
    with fleettrace.plan("plan-s"):
        stream = wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        assert type(stream) is openai.Stream
        seen = dumps(stream)
    assert seen == bare
    assert all(chunk["usage"] is None and chunk["choices"] for chunk in seen)
    assert "stream_options" not in server.requests[0][1]
    assert server.requests[1][1]["stream_options"] == {"include_usage": True}
    [row] = pipeline.rows()
    assert (row["streaming"], row["plan_id"], row["model"]) == (True, "plan-s", "gpt-4o-2024-08-06")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    [call] = calls
    assert (call.cache_read_tokens, call.reasoning_tokens) == (CACHED_TOKENS, REASONING_TOKENS)
    assert call.ttft_ms is not None
    assert 0 < call.ttft_ms <= call.latency_ms
    # The time to first token is stored with the call.
    assert row["ttft_ms"] == pytest.approx(call.ttft_ms)


def test_a_stream_read_after_its_plan_ended_is_placed_and_timed_where_it_started(
    server, pipeline
) -> None:
    """The call's place in the plan tree and its start are those of the request, not
    of wherever the stream happens to be read to its end."""
    wrapped = wrap_openai(client(server))
    with fleettrace.plan("root-r") as root, fleettrace.plan("child-r"):
        before = datetime.now(UTC)
        stream = wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    read_from = datetime.now(UTC)
    chunks = dumps(stream)
    assert chunks and all(chunk["choices"] for chunk in chunks)
    [row] = pipeline.rows()
    assert (row["plan_id"], row["root_plan_id"]) == ("child-r", "root-r")
    assert row["root_started_at"] == root.state.started_at
    assert list(row["plan_path"]) == ["root-r"]
    assert before <= row["started_at"] <= read_from
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_a_caller_who_asked_for_usage_sees_the_usage_chunk(server, pipeline) -> None:
    options = {"include_usage": True}
    wrapped = wrap_openai(client(server))
    chunks = list(
        wrapped.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options=options, tools=TOOLS
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    [row] = pipeline.rows()
    assert row["tool_calls"] == ["search", "read_file"]
    assert row["completion_tokens"] == COMPLETION_TOKENS


@pytest.mark.parametrize("how", ["close", "context", "collected"])
def test_a_stream_abandoned_halfway_is_stored_once(server, pipeline, how) -> None:
    wrapped = wrap_openai(client(server))
    stream = wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    if how == "context":
        with stream:
            next(iter(stream))
    else:
        for _ in zip(range(2), stream, strict=False):
            pass
        if how == "close":
            stream.close()
            stream.close()
        del stream
        gc.collect()
    [row] = pipeline.rows()
    assert (row["streaming"], row["error"], row["model"]) == (True, None, "gpt-4o-2024-08-06")
    # The usage chunk never arrived: the tokens are unknown (0 until issue 12's None).
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        None,
        None,
    )  # no usage: unknown, not zero


def test_a_malformed_chunk_raises_as_unwrapped_and_is_stored_as_the_error(server, pipeline) -> None:
    server.malformed_next()
    with pytest.raises(Exception) as bare:
        list(client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    server.malformed_next()
    wrapped = wrap_openai(client(server))
    with pytest.raises(type(bare.value)):
        list(wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    [row] = pipeline.rows()
    assert row["error"].startswith(f"{type(bare.value).__name__}: ")
    assert row["streaming"] is True


def test_async_calls_and_streams_are_stored(server, pipeline) -> None:
    async def agent() -> list[dict]:
        wrapped = wrap_openai(aclient(server))
        with fleettrace.actor("async-agent"):
            await wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS)
            stream = await wrapped.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            chunks = [chunk.model_dump() async for chunk in stream]
            server.fail(429, times=1, retry_after_ms="5")
            await wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            abandoned = await wrapped.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True
            )
            await abandoned.__anext__()
            await abandoned.close()
            server.fail(400)
            with pytest.raises(openai.BadRequestError):
                await wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            with pytest.raises(openai.NotFoundError):  # not an LLM call: passed through
                await wrapped.models.list()
        return chunks

    chunks = asyncio.run(agent())
    assert chunks and all(chunk["choices"] for chunk in chunks)
    rows = pipeline.rows()
    assert [(r["streaming"], r["retry_count"], r["tool_calls"]) for r in rows] == [
        (False, 0, ["search", "read_file"]),
        (True, 0, []),
        (False, 1, []),
        (True, 0, []),
        (False, 0, []),
    ]
    assert rows[4]["error"].startswith("BadRequestError: Error code: 400")
    assert {r["actor"] for r in rows} == {"async-agent"}
    assert rows[1]["prompt_tokens"] == PROMPT_TOKENS


def test_threads_sharing_a_client_each_record_their_own_retries_and_scopes(
    server, pipeline
) -> None:
    wrapped = wrap_openai(client(server, max_retries=5))
    models = ["gpt-4o", "gpt-4o-mini", "m-2", "m-3"]
    for retries, model in enumerate(models):
        server.fail(429, times=retries, model=model, retry_after_ms="20")
    ready = threading.Barrier(len(models))

    def agent(model: str) -> None:
        with fleettrace.plan(f"plan-{model}"):
            ready.wait(10)
            wrapped.chat.completions.create(model=model, messages=MESSAGES)

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(agent, m)) for m in models
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    rows = pipeline.rows()
    assert sorted((r["plan_id"], r["retry_count"]) for r in rows) == [
        (f"plan-{model}", retries)
        for retries, model in sorted(enumerate(models), key=lambda x: x[1])
    ]


def test_the_responses_api_plain_and_streamed(server, pipeline) -> None:
    calls: list[Call] = []
    wrapped = wrap_openai(client(server), on_call=calls.append)
    answer = wrapped.responses.create(model="gpt-4o", input="hi", tools=TOOLS)
    assert answer.output_text == "Hello from the local server"
    events = list(wrapped.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert "stream_options" not in server.requests[1][1]
    with wrapped.responses.stream(model="gpt-4o", input="hi") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text == "Hello from the local server"
    rows = pipeline.rows()
    assert [(r["model"], r["streaming"], r["tool_calls"]) for r in rows] == [
        ("gpt-4o-2024-08-06", False, ["search", "read_file"]),
        ("gpt-4o-mini-2024-07-18", True, []),
        ("gpt-4o-2024-08-06", True, []),
    ]
    assert {(r["prompt_tokens"], r["completion_tokens"]) for r in rows} == {
        (PROMPT_TOKENS, COMPLETION_TOKENS)
    }
    assert [(c.cache_read_tokens, c.reasoning_tokens) for c in calls] == [
        (CACHED_TOKENS, REASONING_TOKENS)
    ] * 3


def test_the_parse_and_stream_helpers_are_recorded(server, pipeline) -> None:
    wrapped = wrap_openai(client(server))
    parsed = wrapped.chat.completions.parse(model="gpt-4o", messages=MESSAGES)
    assert parsed.choices[0].message.content == "Hello from the local server"
    with wrapped.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
        kinds = [event.type for event in stream]
    assert "chunk" in kinds
    rows = pipeline.rows()
    assert [(r["model"], r["streaming"], r["prompt_tokens"]) for r in rows] == [
        ("gpt-4o-2024-08-06", False, PROMPT_TOKENS),
        ("gpt-4o-mini-2024-07-18", True, PROMPT_TOKENS),
    ]


def test_raw_responses_and_other_endpoints_pass_through_unrecorded(server, pipeline) -> None:
    wrapped = wrap_openai(client(server))
    raw = wrapped.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.parse().usage.prompt_tokens == PROMPT_TOKENS
    with pytest.raises(openai.NotFoundError):
        wrapped.embeddings.create(model="text-embedding-3-small", input="hi")
    assert pipeline.rows() == []


def test_an_async_stream_that_fails_midway_is_stored_with_its_error(server, pipeline) -> None:
    async def agent() -> type[BaseException]:
        wrapped = wrap_openai(aclient(server))
        server.malformed_next()
        stream = await wrapped.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
        try:
            async for _ in stream:
                pass
        except Exception as error:
            return type(error)
        raise AssertionError("the malformed chunk raised nothing")

    raised = asyncio.run(agent())
    [row] = pipeline.rows()
    assert row["error"].startswith(f"{raised.__name__}: ")


def test_wrapping_twice_records_once_and_unwrap_restores(server, pipeline) -> None:
    made = client(server)
    wrapped = wrap_openai(wrap_openai(made))
    assert wrapped is made and is_wrapped(made)
    wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert unwrap(made) is made and not is_wrapped(made)
    assert "request" not in vars(made)
    made.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(pipeline.rows()) == 1


def test_wrapping_something_else_says_what_it_takes(pipeline) -> None:
    with pytest.raises(TypeError, match="can wrap an OpenAI or Anthropic SDK client, not dict"):
        wrap_openai({})
    assert pipeline.rows() == []


def test_a_client_made_by_with_options_records_too(server, pipeline) -> None:
    wrapped = wrap_openai(client(server), provider="local-vllm")
    wrapped.with_options(max_retries=0).chat.completions.create(model="m-1", messages=MESSAGES)
    [row] = pipeline.rows()
    assert (row["provider"], row["model"], row["cost_usd"]) == ("local-vllm", "m-1", None)


def test_inside_an_open_llm_span_the_client_fills_it(server, pipeline) -> None:
    server.fail(429, times=1, retry_after_ms="5")
    wrapped = wrap_openai(client(server))
    with fleettrace.actor("planner") as planner, planner.llm("openai", "gpt-4o") as call:
        wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS)
    [row] = pipeline.rows()
    assert row["trace_id"] == call.trace.trace_id
    assert (row["model"], row["actor"], row["retry_count"]) == ("gpt-4o-2024-08-06", "planner", 1)
    assert (row["prompt_tokens"], row["tool_calls"]) == (PROMPT_TOKENS, ["search", "read_file"])


def test_a_closed_emitter_never_raises_into_the_agent(server, pipeline) -> None:
    pipeline.emitter.close()
    wrapped = wrap_openai(client(server), emitter=pipeline.emitter)
    answer = wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert answer.usage.prompt_tokens == PROMPT_TOKENS
    stream = wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert len(list(stream)) == 7  # role, five words, finish: no usage chunk
    assert pipeline.rows() == []


class BrokenAdapter(OpenAIAdapter):
    """An adapter whose every reading fails, as one could on an answer of a new shape."""

    def __init__(self, fail_prepare: bool) -> None:
        self.fail_prepare = fail_prepare

    def prepare(self, options, call):
        if self.fail_prepare:
            raise KeyError("prepare")
        return super().prepare(options, call)

    def read(self, result, call):
        raise ValueError("read")

    def event(self, event, call):
        raise ValueError("event")

    def take(self, data, call):
        raise ValueError("take")


def test_bookkeeping_that_fails_never_reaches_the_caller(server, pipeline) -> None:
    for fail_prepare in (True, False):
        made = client(server)
        wrap_client(
            made, Wrapping("openai", BrokenAdapter(fail_prepare), None, None), is_async=False
        )
        answer = made.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert answer.usage.prompt_tokens == PROMPT_TOKENS
        chunks = list(made.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
        assert len(chunks) == 7
    rows = pipeline.rows()
    # A request the wrapper could not prepare is sent as it was and not recorded; answers
    # it could not read are recorded with what is known: the requested model, no usage.
    assert [(r["model"], r["prompt_tokens"], r["streaming"]) for r in rows] == [
        ("gpt-4o", None, False),
        ("gpt-4o", None, True),
    ]


def test_the_public_names_and_an_unknown_one() -> None:
    assert sorted(fleettrace.integrations.__all__) == [
        "Call",
        "CallObserver",
        "FleettraceCallbackHandler",
        "FleettraceSpanProcessor",
        "is_wrapped",
        "unwrap",
        "wrap_anthropic",
        "wrap_openai",
    ]
    for name in fleettrace.integrations.__all__:
        assert getattr(fleettrace.integrations, name) is not None
    with pytest.raises(AttributeError, match="wrap_cohere"):
        _ = fleettrace.integrations.wrap_cohere


def test_importing_fleettrace_imports_no_integration_library() -> None:
    # (redis-py 8 imports opentelemetry itself, so the OTel module is checked instead.)
    code = (
        "import sys, fleettrace, fleettrace.integrations; "
        "print(sorted(m for m in ('openai', 'anthropic', 'langchain_core', "
        "'fleettrace.integrations.otel', 'fleettrace.integrations.openai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
