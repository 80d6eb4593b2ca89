"""FleettraceSpanProcessor in a real opentelemetry-sdk TracerProvider: GenAI spans as an
instrumentor makes them become rows in PostgreSQL; other spans leave nothing."""

from __future__ import annotations

import psycopg
import pytest
from genai_prices import Usage, calc_price
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode

import fleettrace
from fleettrace.integrations import Call, FleettraceSpanProcessor


@pytest.fixture
def calls() -> list[Call]:
    return []


@pytest.fixture
def tracer(calls):
    provider = TracerProvider()
    provider.add_span_processor(FleettraceSpanProcessor(on_call=calls.append))
    yield provider.get_tracer("test-instrumentor")
    provider.shutdown()


def chat_span(tracer, **extra) -> None:
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 500,
        "gen_ai.usage.cache_read.input_tokens": 800,
        "gen_ai.usage.reasoning.output_tokens": 50,
        **extra,
    }
    with tracer.start_as_current_span("chat gpt-4o", attributes=attributes):
        pass


def test_a_genai_chat_span_is_stored_as_an_llm_call_in_its_scopes(tracer, calls, pipeline) -> None:
    with fleettrace.plan("plan-otel"), fleettrace.actor("summariser"):
        chat_span(
            tracer, **{"gen_ai.request.stream": True, "gen_ai.response.time_to_first_chunk": 0.25}
        )
    [row] = pipeline.rows()
    assert (row["plan_id"], row["actor"], row["provider"]) == ("plan-otel", "summariser", "openai")
    assert (row["model"], row["prompt_tokens"], row["completion_tokens"]) == (
        "gpt-4o-2024-08-06",
        1000,
        500,
    )
    assert (row["streaming"], row["error"]) == (True, None)
    assert (row["cache_read_tokens"], row["reasoning_tokens"]) == (800, 50)
    expected = calc_price(
        Usage(input_tokens=1000, cache_read_tokens=800, output_tokens=500),
        model_ref="gpt-4o-2024-08-06",
        provider_id="openai",
    ).total_price
    assert row["cost_usd"] == pytest.approx(float(expected))
    assert row["cost_usd"] < 0.0075  # the cached part at the cache-read rate
    [call] = calls
    assert (call.cache_read_tokens, call.reasoning_tokens, call.ttft_ms) == (800, 50, 250.0)


def test_a_processor_installed_twice_records_once(pipeline) -> None:
    provider = TracerProvider()
    provider.add_span_processor(FleettraceSpanProcessor())
    provider.add_span_processor(FleettraceSpanProcessor())
    chat_span(provider.get_tracer("twice"))
    provider.shutdown()
    [row] = pipeline.rows()
    assert row["completion_tokens"] == 500


def test_older_attribute_names_and_a_failed_span(tracer, pipeline) -> None:
    attributes = {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-3-5-haiku",
        "gen_ai.usage.prompt_tokens": 10,
        "gen_ai.usage.completion_tokens": 2,
        "error.type": "RateLimitError",
    }
    with tracer.start_as_current_span("completion", attributes=attributes) as span:
        span.set_status(Status(StatusCode.ERROR, "slow down"))
    [row] = pipeline.rows()
    assert (row["provider"], row["model"], row["prompt_tokens"]) == (
        "anthropic",
        "claude-3-5-haiku",
        10,
    )
    assert row["error"] == "RateLimitError: slow down"


def test_tool_spans_are_tool_invocations_and_other_spans_are_ignored(tracer, pipeline) -> None:
    with fleettrace.plan("plan-tools"):
        with tracer.start_as_current_span("http GET", attributes={"http.method": "GET"}):
            pass
        with tracer.start_as_current_span("no attributes"):
            pass
        agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "a"}
        with tracer.start_as_current_span("invoke_agent a", attributes=agent):
            tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}
            with tracer.start_as_current_span("execute_tool search", attributes=tool):
                pass
    assert pipeline.rows() == []
    with psycopg.connect(pipeline.database_url) as conn:
        samples = conn.execute(
            "SELECT key, labels::text, plan_id FROM metric_samples ORDER BY key"
        ).fetchall()
    assert samples == [
        ("plan.duration_seconds", '{"phase": "total"}', "plan-tools"),
        ("tool.error_rate", '{"tool": "search", "outcome": "ok"}', "plan-tools"),
        ("tool.invocation_duration_ms", '{"tool": "search"}', "plan-tools"),
    ]


def test_inside_an_open_llm_span_the_genai_span_fills_it(tracer, pipeline) -> None:
    with fleettrace.actor("planner") as planner, planner.llm("openai", "gpt-4o") as call:
        chat_span(tracer)
    [row] = pipeline.rows()
    assert row["trace_id"] == call.trace.trace_id
    assert (row["model"], row["prompt_tokens"]) == ("gpt-4o-2024-08-06", 1000)


def test_odd_attributes_are_recorded_as_far_as_they_are_valid(pipeline) -> None:
    def failing_observer(call: Call) -> None:
        raise RuntimeError("an observer's own bug")

    provider = TracerProvider()
    processor = FleettraceSpanProcessor(emitter=pipeline.emitter, on_call=failing_observer)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("odd")
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.input_tokens": -5,
        "gen_ai.usage.output_tokens": 3,
    }
    with tracer.start_as_current_span("chat", attributes=attributes):
        pass
    assert processor.force_flush(10_000)
    provider.shutdown()
    [row] = pipeline.rows()
    assert (row["provider"], row["model"], row["prompt_tokens"], row["completion_tokens"]) == (
        "unknown",
        "unknown",
        None,  # the invalid count is dropped: unknown, not zero
        3,
    )
