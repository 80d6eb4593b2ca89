"""How an ``LLMTrace`` becomes LangSmith runs: a pure mapping, no I/O.

Run ids are derived, never drawn at random, so an entry delivered twice (a worker
killed before its acknowledgement) posts the same runs again and LangSmith keeps one
of each (it answers 409 to the second).

- The LLM call is a run of type ``llm`` whose id *is* the record's ``trace_id``.
- The calls of one plan hang under one root run per plan and UTC day, so a plan
  reads as one trace. LangSmith orders a trace by ``dotted_order``
  (``<start>Z<run id>`` segments joined by ``.``, root first) and wants every
  segment's time no earlier than its parent's. A root that must come out the same
  on every worker, whatever record of the plan it sees first, cannot know the
  plan's first call; the start of the UTC day can be computed from any of them and
  is never later than a call of that day. A plan that runs past midnight is
  therefore shown as one trace per day, each carrying ``plan_id`` in its metadata.
- A call without a plan is a trace of its own.

That is the mapping of records written before format version 3. A record of version
3 carries its plan tree's root and start and is placed in that tree instead: the root
plan's run carries the plan's real start (and its end once the plan's end record
arrives), child plans nest under their parent, actors and tools are runs of their own
(:mod:`fleettrace_worker.forward.langsmith.tree_runs`, whose ``runs_for`` the forwarder uses).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from fleettrace.model import LLMTrace

#: The uuid5 namespace of plan root runs. Changing it would split every plan already
#: forwarded into two traces, so it is fixed for good.
PLAN_ROOT_NAMESPACE: Final = uuid.UUID("6d1c3f0e-2b7a-5c4e-9f10-8a3b5e7d2c41")
LLM_RUN_TYPE: Final = "llm"
PLAN_RUN_TYPE: Final = "chain"
_DOTTED_TIME_FORMAT: Final = "%Y%m%dT%H%M%S%fZ"

Run = dict[str, Any]


def plan_root_id(plan_id: str, day: date) -> uuid.UUID:
    return uuid.uuid5(PLAN_ROOT_NAMESPACE, f"plan/{plan_id}/{day.isoformat()}")


def dotted_segment(start: datetime, run_id: uuid.UUID) -> str:
    return f"{start.astimezone(UTC).strftime(_DOTTED_TIME_FORMAT)}{run_id}"


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def plan_root_run(plan_id: str, day: date, project: str) -> Run:
    """The run a plan's calls of one UTC day hang under; it spans that day."""
    root_id = plan_root_id(plan_id, day)
    start = _day_start(day)
    return {
        "id": root_id,
        "trace_id": root_id,
        "dotted_order": dotted_segment(start, root_id),
        "name": f"plan {plan_id}",
        "run_type": PLAN_RUN_TYPE,
        "inputs": {"plan_id": plan_id},
        "outputs": {},
        "start_time": start,
        "end_time": start + timedelta(days=1),
        "extra": {"metadata": {"plan_id": plan_id}},
        "session_name": project,
    }


#: LangSmith's ``InputTokenDetails`` / ``OutputTokenDetails`` keys per LLMTrace field.
INPUT_TOKEN_DETAILS: Final = (
    ("cache_read", "cache_read_tokens"),
    ("cache_creation", "cache_write_tokens"),
    ("audio", "audio_input_tokens"),
)
OUTPUT_TOKEN_DETAILS: Final = (("reasoning", "reasoning_tokens"), ("audio", "audio_output_tokens"))


def usage_metadata(trace: LLMTrace) -> dict[str, Any]:
    """LangSmith's ``UsageMetadata``. Only what is known is given: a cost only when
    the call was priced (an unpriced call is not a free one), token counts only when
    the provider reported them (unknown is not zero), a detail only when reported."""
    usage: dict[str, Any] = {}
    if trace.prompt_tokens is not None:
        usage["input_tokens"] = trace.prompt_tokens
    if trace.completion_tokens is not None:
        usage["output_tokens"] = trace.completion_tokens
    if trace.total_tokens is not None:
        usage["total_tokens"] = trace.total_tokens
    for key, details in (
        ("input_token_details", INPUT_TOKEN_DETAILS),
        ("output_token_details", OUTPUT_TOKEN_DETAILS),
    ):
        reported = {name: getattr(trace, field) for name, field in details}
        reported = {name: value for name, value in reported.items() if value is not None}
        if reported:
            usage[key] = reported
    if trace.cost_usd is not None:
        usage["total_cost"] = trace.cost_usd
    return usage


def llm_run(trace: LLMTrace, project: str) -> Run:
    """The run of one LLM call, placed under its plan's root when it has a plan."""
    run_id = trace.trace_id
    start = trace.started_at
    own = dotted_segment(start, run_id)
    usage = usage_metadata(trace)
    # The record's own metadata first: fleettrace's keys below win a clash, so a run
    # always says what fleettrace measured.
    metadata: dict[str, Any] = {
        **trace.metadata,
        "plan_id": trace.plan_id,
        "decision_id": trace.decision_id,
        "actor": trace.actor,
        "ls_provider": trace.provider,
        "ls_model_name": trace.model,
        "cost_usd": trace.cost_usd,
        "latency_ms": trace.latency_ms,
        "tool_calls": list(trace.tool_calls),
        "context_hash": trace.context_hash,
        "streaming": trace.streaming,
        "retry_count": trace.retry_count,
        "usage_metadata": usage,
        "user_id": trace.user_id,
        "session_id": trace.session_id,
        "ttft_ms": trace.ttft_ms,
    }
    run: Run = {
        "id": run_id,
        "name": f"{trace.provider}/{trace.model}",
        "run_type": LLM_RUN_TYPE,
        "inputs": {"context_hash": trace.context_hash},
        "outputs": {"tool_calls": list(trace.tool_calls), "usage_metadata": usage},
        "start_time": start,
        "end_time": start + timedelta(milliseconds=trace.latency_ms),
        "error": trace.error,
        "extra": {
            "metadata": metadata,
            "invocation_params": {"stream": trace.streaming},
        },
        "tags": ([f"actor:{trace.actor}"] if trace.actor else []) + trace.tags,
        "session_name": project,
    }
    if trace.plan_id is None:
        run["trace_id"] = run_id
        run["dotted_order"] = own
    else:
        root_id = plan_root_id(trace.plan_id, start.date())
        root_start = _day_start(start.date())
        run["trace_id"] = root_id
        run["parent_run_id"] = root_id
        run["dotted_order"] = f"{dotted_segment(root_start, root_id)}.{own}"
    return run


def runs_for(trace: LLMTrace, project: str) -> list[Run]:
    """Every run one record needs, parents before children."""
    if trace.plan_id is None:
        return [llm_run(trace, project)]
    return [plan_root_run(trace.plan_id, trace.started_at.date(), project), llm_run(trace, project)]
