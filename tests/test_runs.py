"""The mapping of an LLMTrace to LangSmith runs: ids, tree shape, usage, metadata."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone

from fleettrace_worker.forward.langsmith.runs import (
    LLM_RUN_TYPE,
    PLAN_RUN_TYPE,
    dotted_segment,
    llm_run,
    plan_root_id,
    plan_root_run,
    runs_for,
)
from tests.factories import llm_trace

STARTED = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


#: One call with every field LangSmith shows set.
CALL = {
    "trace_id": uuid.UUID("0b6f0c1e-8a4e-4c1d-9f4e-1a2b3c4d5e6f"),
    "plan_id": "plan-7",
    "decision_id": "d-3",
    "actor": "researcher",
    "provider": "openai",
    "model": "gpt-4o",
    "prompt_tokens": 1000,
    "completion_tokens": 500,
    "latency_ms": 1234.5,
    "tool_calls": ["search", "fetch"],
    "context_hash": "ab" * 32,
    "streaming": True,
    "retry_count": 2,
    "started_at": STARTED,
    "cost_usd": 0.0075,
}


def test_llm_run_id_is_the_trace_id_and_carries_usage_cost_latency_and_metadata() -> None:
    trace = llm_trace(CALL)
    run = llm_run(trace, "fleet")
    assert run["id"] == trace.trace_id
    assert run["run_type"] == LLM_RUN_TYPE
    assert run["name"] == "openai/gpt-4o"
    assert run["session_name"] == "fleet"
    assert run["start_time"] == STARTED
    assert run["end_time"] == STARTED + timedelta(milliseconds=1234.5)
    assert run["error"] is None
    usage = {
        "input_tokens": 1000,
        "output_tokens": 500,
        "total_tokens": 1500,
        "total_cost": trace.cost_usd,
    }
    assert trace.cost_usd is not None and trace.cost_usd > 0
    assert run["outputs"] == {"tool_calls": ["search", "fetch"], "usage_metadata": usage}
    metadata = run["extra"]["metadata"]
    assert metadata["usage_metadata"] == usage
    assert metadata["plan_id"] == "plan-7"
    assert metadata["decision_id"] == "d-3"
    assert metadata["actor"] == "researcher"
    assert metadata["ls_provider"] == "openai"
    assert metadata["ls_model_name"] == "gpt-4o"
    assert metadata["cost_usd"] == trace.cost_usd
    assert metadata["tool_calls"] == ["search", "fetch"]
    assert metadata["retry_count"] == 2
    assert metadata["streaming"] is True
    assert run["extra"]["invocation_params"] == {"stream": True}
    assert run["tags"] == ["actor:researcher"]


def test_unknown_cost_is_left_out_rather_than_given_as_zero() -> None:
    trace = llm_trace(CALL, provider="acme", model="unheard-of-model", actor=None, cost_usd=None)
    assert trace.cost_usd is None
    run = llm_run(trace, "fleet")
    assert "total_cost" not in run["outputs"]["usage_metadata"]
    assert run["tags"] == []


def test_error_is_passed_on() -> None:
    run = llm_run(llm_trace(CALL, error="RateLimitError: slow down"), "fleet")
    assert run["error"] == "RateLimitError: slow down"


def test_a_plan_is_one_trace_under_a_deterministic_root() -> None:
    first = llm_trace(CALL)
    second = llm_trace(CALL, trace_id=uuid.uuid4(), started_at=STARTED + timedelta(hours=3))
    root_id = plan_root_id("plan-7", date(2026, 3, 4))
    runs_a = runs_for(first, "fleet")
    runs_b = runs_for(second, "fleet")
    assert runs_a[0] == runs_b[0] == plan_root_run("plan-7", date(2026, 3, 4), "fleet")
    root = runs_a[0]
    assert root["id"] == root["trace_id"] == root_id
    assert root["run_type"] == PLAN_RUN_TYPE
    assert root["dotted_order"] == "20260304T000000000000Z" + str(root_id)
    assert root["start_time"] == datetime(2026, 3, 4, tzinfo=UTC)
    for run, trace in ((runs_a[1], first), (runs_b[1], second)):
        assert run["trace_id"] == root_id
        assert run["parent_run_id"] == root_id
        parent_part, own_part = run["dotted_order"].split(".")
        assert parent_part == root["dotted_order"]
        assert own_part == dotted_segment(trace.started_at, trace.trace_id)
        # LangSmith wants a child no earlier than its parent.
        assert own_part[:22] >= parent_part[:22]
        assert run["start_time"] >= root["start_time"]
        assert run["end_time"] <= root["end_time"]


def test_the_mapping_is_the_same_every_time() -> None:
    trace = llm_trace(CALL)
    assert runs_for(trace, "fleet") == runs_for(trace, "fleet")


def test_plans_of_another_day_or_name_have_other_roots() -> None:
    day = date(2026, 3, 4)
    assert plan_root_id("plan-7", day) != plan_root_id("plan-8", day)
    assert plan_root_id("plan-7", day) != plan_root_id("plan-7", day + timedelta(days=1))
    assert plan_root_id("plan-7", day) == plan_root_id("plan-7", date(2026, 3, 4))


def test_a_call_without_a_plan_is_a_trace_of_its_own() -> None:
    trace = llm_trace(CALL, plan_id=None)
    (run,) = runs_for(trace, "fleet")
    assert run["trace_id"] == run["id"] == trace.trace_id
    assert "parent_run_id" not in run
    assert run["dotted_order"] == "20260304T050607890123Z" + str(trace.trace_id)


def test_dotted_segment_is_in_utc() -> None:
    run_id = uuid.UUID(int=1)
    local = datetime(2026, 3, 4, 7, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert dotted_segment(local, run_id) == f"20260304T070000000000Z{run_id}"


def test_usage_metadata_carries_reported_token_details_and_leaves_out_the_unknown() -> None:
    trace = llm_trace(
        CALL,
        prompt_tokens=10_000,
        cache_read_tokens=9_000,
        cache_write_tokens=500,
        audio_input_tokens=0,
        completion_tokens=300,
        reasoning_tokens=200,
    )
    assert llm_run(trace, "fleet")["outputs"]["usage_metadata"] == {
        "input_tokens": 10_000,
        "output_tokens": 300,
        "total_tokens": 10_300,
        "input_token_details": {"cache_read": 9_000, "cache_creation": 500, "audio": 0},
        "output_token_details": {"reasoning": 200},
        "total_cost": 0.0075,
    }
    unknown = llm_trace(CALL, prompt_tokens=None, completion_tokens=None, cost_usd=None)
    # No usage reported: nothing that would read as zero tokens or a free call.
    assert llm_run(unknown, "fleet")["outputs"]["usage_metadata"] == {}
    half = llm_trace(CALL, completion_tokens=None, reasoning_tokens=7, cost_usd=None)
    assert llm_run(half, "fleet")["outputs"]["usage_metadata"] == {
        "input_tokens": 1000,
        "output_token_details": {"reasoning": 7},
    }
