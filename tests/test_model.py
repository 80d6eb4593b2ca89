"""LLMTrace and MetricSample refuse what a user would call wrong, naming the field."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fleettrace import LLMTrace, MetricKey, MetricSample
from fleettrace.model import (
    MAX_COST_USD,
    MAX_ERROR_CHARS,
    MAX_ID_CHARS,
    MAX_LATENCY_MS,
    MAX_NAME_CHARS,
    MAX_RETRIES,
    MAX_TOKENS,
    MAX_TOOL_CALLS,
)
from fleettrace.pricing import price_trace, price_usd

BASE: dict[str, Any] = {"provider": "openai", "model": "gpt-4o"}


def failing_fields(**fields: Any) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        LLMTrace(**{**BASE, **fields})
    return [str(error["loc"][0]) for error in caught.value.errors()]


def test_llm_trace_has_exactly_the_fields_of_the_issue() -> None:
    assert list(LLMTrace.model_fields) == [
        "trace_id",
        "plan_id",
        "decision_id",
        "actor",
        "provider",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "tool_calls",
        "context_hash",
        "streaming",
        "retry_count",
        "error",
        "started_at",
        # Added beside the seed's fields (stream format version 2).
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "audio_input_tokens",
        "audio_output_tokens",
        # Attributes (stream format version 3).
        "tags",
        "metadata",
        "user_id",
        "session_id",
        "ttft_ms",
        # The plan tree (stream format version 3).
        "root_plan_id",
        "root_started_at",
        "plan_path",
    ]


def test_defaults_new_uuid_utc_start_and_derived_total() -> None:
    first = LLMTrace(**BASE, prompt_tokens=10, completion_tokens=5)
    second = LLMTrace(**BASE)
    assert isinstance(first.trace_id, uuid.UUID)
    assert first.trace_id != second.trace_id
    assert first.started_at.tzinfo is not None
    assert first.started_at.utcoffset() == timedelta(0)
    assert first.total_tokens == 15
    assert "total_tokens" not in first.model_dump()


def test_trace_id_accepts_its_string_form() -> None:
    trace_id = uuid.uuid4()
    assert LLMTrace(**BASE, trace_id=str(trace_id)).trace_id == trace_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt_tokens", -1),
        ("completion_tokens", -1),
        ("prompt_tokens", MAX_TOKENS + 1),
        ("prompt_tokens", 1.5),
        ("prompt_tokens", "10"),
        ("retry_count", -1),
        ("retry_count", MAX_RETRIES + 1),
        ("cost_usd", -0.01),
        ("cost_usd", math.nan),
        ("cost_usd", math.inf),
        ("cost_usd", MAX_COST_USD * 2),
        ("latency_ms", -1.0),
        ("latency_ms", math.nan),
        ("latency_ms", -math.inf),
        ("latency_ms", MAX_LATENCY_MS + 1),
        ("context_hash", "ABCDEF" + "0" * 58),
        ("context_hash", "0" * 63),
        ("context_hash", "g" * 64),
        ("tool_calls", ["x"] * (MAX_TOOL_CALLS + 1)),
        ("tool_calls", [""]),
        ("tool_calls", ["t" * (MAX_NAME_CHARS + 1)]),
        ("plan_id", ""),
        ("plan_id", "p" * (MAX_ID_CHARS + 1)),
        ("decision_id", "d" * (MAX_ID_CHARS + 1)),
        ("actor", "a" * (MAX_NAME_CHARS + 1)),
        ("provider", "x" * (MAX_NAME_CHARS + 1)),
        ("model", ""),
        ("error", "e" * (MAX_ERROR_CHARS + 1)),
        ("error", "bad\x00byte"),
        ("streaming", "yes"),
        ("started_at", datetime(2026, 1, 1)),
        ("started_at", "2026-01-01T00:00:00Z"),
    ],
)
def test_every_bound_names_its_field(field: str, value: Any) -> None:
    assert failing_fields(**{field: value}) == [field]


def test_unknown_fields_and_mutation_are_refused() -> None:
    assert failing_fields(total_tokens=3) == ["total_tokens"]
    trace = LLMTrace(**BASE)
    with pytest.raises(ValidationError):
        trace.prompt_tokens = 3  # type: ignore[misc]


def test_values_at_the_bounds_are_accepted() -> None:
    trace = LLMTrace(
        **BASE,
        prompt_tokens=MAX_TOKENS,
        retry_count=MAX_RETRIES,
        cost_usd=0,
        latency_ms=12,
        tool_calls=["t"] * MAX_TOOL_CALLS,
        context_hash="ab" * 32,
        error="e" * MAX_ERROR_CHARS,
        plan_id="p" * MAX_ID_CHARS,
    )
    assert trace.cost_usd == 0.0
    assert trace.latency_ms == 12.0
    assert isinstance(trace.latency_ms, float)


def test_start_time_in_another_zone_is_kept_as_utc() -> None:
    paris = timezone(timedelta(hours=1))
    trace = LLMTrace(**BASE, started_at=datetime(2026, 3, 1, 13, 0, tzinfo=paris))
    assert trace.started_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert trace.started_at.tzinfo is UTC


def test_cost_left_out_is_not_priced_on_the_callers_thread_but_can_be_asked_for() -> None:
    trace = LLMTrace(**BASE, prompt_tokens=1000, completion_tokens=500)
    assert trace.cost_usd is None  # priced by the emitter's sender thread
    assert price_trace(trace) == pytest.approx(0.0075)
    assert price_usd("openai", "gpt-4o", 1000, 500) == pytest.approx(0.0075)
    assert price_trace(LLMTrace(**BASE, prompt_tokens=1000, cost_usd=1.25)) == 1.25


def test_token_details_are_parts_of_their_totals() -> None:
    trace = LLMTrace(
        **BASE,
        prompt_tokens=10_000,
        completion_tokens=300,
        cache_read_tokens=9_000,
        cache_write_tokens=1_000,
        reasoning_tokens=300,
        audio_input_tokens=10_000,
        audio_output_tokens=0,
    )
    assert (trace.cache_read_tokens, trace.reasoning_tokens) == (9_000, 300)
    assert LLMTrace(**BASE).cache_read_tokens is None  # not reported
    for fields, message in [
        (
            {"prompt_tokens": 100, "cache_read_tokens": 60, "cache_write_tokens": 41},
            "exceed prompt",
        ),
        ({"prompt_tokens": 100, "audio_input_tokens": 101}, "audio_input_tokens must not"),
        ({"completion_tokens": 10, "reasoning_tokens": 11}, "reasoning_tokens must not"),
        ({"completion_tokens": 10, "audio_output_tokens": 11}, "audio_output_tokens must not"),
        ({"cache_read_tokens": -1}, "greater than or equal to 0"),
        ({"reasoning_tokens": MAX_TOKENS + 1}, "less than or equal"),
        ({"cache_write_tokens": 1.0}, "valid integer"),
    ]:
        with pytest.raises(ValidationError, match=message):
            LLMTrace(**BASE, **fields)


def test_unknown_usage_is_none_not_zero() -> None:
    trace = LLMTrace(**BASE, prompt_tokens=None, completion_tokens=None)
    assert (trace.prompt_tokens, trace.total_tokens, trace.tokens_known) == (None, None, False)
    assert price_trace(trace) is None  # unknown tokens: unpriced, never zero
    half = LLMTrace(**BASE, prompt_tokens=10, completion_tokens=None, cache_read_tokens=5)
    assert (half.total_tokens, half.tokens_known, price_trace(half)) == (None, False, None)
    assert LLMTrace(**BASE, completion_tokens=None, reasoning_tokens=10**6).reasoning_tokens


def test_given_cost_wins_over_the_price_table() -> None:
    assert LLMTrace(**BASE, prompt_tokens=1000, cost_usd=1.25).cost_usd == 1.25


def test_unknown_model_leaves_cost_unset_and_says_so() -> None:
    trace = LLMTrace(provider="acme", model="acme-unreleased-9", prompt_tokens=1000)
    assert trace.cost_usd is None
    assert trace.cost_known is False


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (None, None),
        ("RateLimitError: slow down", "RateLimitError"),
        ("timeout", "timeout"),
        (": no type", "error"),
    ],
)
def test_error_type_is_the_text_before_the_colon(error: str | None, error_type: str | None) -> None:
    assert LLMTrace(**BASE, error=error).error_type == error_type


def test_metric_sample_checks_labels_against_the_key() -> None:
    sample = MetricSample(key="tool.invocation_duration_ms", value=3, labels={"tool": "grep"})
    assert sample.key is MetricKey.TOOL_INVOCATION_DURATION_MS
    assert sample.value == 3.0
    assert sample.label_pairs == (("tool", "grep"),)
    with pytest.raises(ValidationError, match=r"labels of tool.invocation_duration_ms must be"):
        MetricSample(key=MetricKey.TOOL_INVOCATION_DURATION_MS, value=1, labels={"x": "y"})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"key": "no.such_key", "value": 1.0}, "key"),
        ({"key": "context.tokens_used", "value": math.nan}, "value"),
        ({"key": "context.tokens_used", "value": math.inf}, "value"),
        (
            {"key": "context.tokens_used", "value": 1.0, "observed_at": datetime(2026, 1, 1)},
            "observed_at",
        ),
        ({"key": "context.tokens_used", "value": 1.0, "extra": 1}, "extra"),
    ],
)
def test_metric_sample_bounds_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MetricSample(**fields)
    assert caught.value.errors()[0]["loc"][0] == field


def test_only_gauges_may_go_negative() -> None:
    assert MetricSample(key=MetricKey.CONTEXT_TOKENS_USED, value=-1.0).value == -1.0
    with pytest.raises(ValidationError, match="must not be negative"):
        MetricSample(key=MetricKey.PLAN_COST_USD, value=-1.0, labels={"plan": "p"})


DOC = Path(__file__).resolve().parent.parent / "docs" / "reference" / "observability.md"


def doc_rows(heading: str) -> dict[str, list[str]]:
    """The rows of the first table under ``heading``, keyed by their first cell."""
    section = DOC.read_text().split(heading, 1)[1]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1:]
        elif rows and not line.startswith("|"):
            break
    return rows


def test_docs_schema_table_lists_every_field() -> None:
    assert list(doc_rows("## The trace schema")) == list(LLMTrace.model_fields)


def test_docs_metric_table_matches_the_specs() -> None:
    rows = doc_rows("## The 17 metrics")
    assert list(rows) == [key.value for key in MetricKey]
    for key in MetricKey:
        spec = key.spec
        kind, unit, labels, buckets = rows[key.value][:4]
        assert (kind, unit) == (spec.type.value, spec.unit)
        assert labels == (", ".join(spec.labels) or "—")
        if buckets.startswith("as "):
            buckets = rows[buckets.split("`")[1]][3]
        shown = [float(b) for b in buckets.split(" (")[0].split(", ")] if spec.buckets else []
        assert shown == pytest.approx(list(spec.buckets)), key
