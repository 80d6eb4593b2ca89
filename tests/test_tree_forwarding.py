"""The plan tree forwarded, against the real Redis: to the LangSmith-compatible server
through the real ``langsmith`` client, and to the strict local OTLP receiver. A plan
with a child plan, an actor, an LLM call and a tool reads as one tree in both, with
the plans' real times, and a redelivered entry adds nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime

import pytest
import redis
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from fleettrace import hooks
from fleettrace.codec import decode_entry
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.forward.langsmith.group import ForwardLoop
from fleettrace_worker.forward.langsmith.group import loop_settings as langsmith_loop_settings
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.forward.langsmith.tree_runs import plan_run_id
from fleettrace_worker.forward.otlp.group import OtlpLoop
from fleettrace_worker.forward.otlp.group import loop_settings as otlp_loop_settings
from fleettrace_worker.forward.otlp.settings import OtlpSettings
from fleettrace_worker.keys import LANGSMITH_GROUP, OTLP_GROUP
from fleettrace_worker.stream.consumer import Consumer
from tests.emitting import make_emitter
from tests.langsmith_server import LangSmithServer
from tests.otlp_receiver import GENAI_NAMES, OtlpReceiver

API_KEY = "lsv2_pt_0123456789abcdef0123456789abcdef_0123456789"


@pytest.fixture
def recorded(redis_url: str, keys: Keys) -> Iterator[list[object]]:
    """A root plan with a child plan, an actor, a call and a tool, in the stream."""
    emitter = make_emitter(redis_url, keys)
    with (
        hooks.plan("root", emitter=emitter),
        hooks.plan("child", emitter=emitter),
        hooks.decision("d", emitter=emitter),
        hooks.actor("planner", emitter=emitter),
    ):
        hooks.record_llm_call(
            "openai", "gpt-4o", emitter=emitter, prompt_tokens=10, completion_tokens=2,
            cost_usd=0.01, latency_ms=3.0,
        )  # fmt: skip
        with pytest.raises(TimeoutError), hooks.tool("search", emitter=emitter):
            raise TimeoutError("slow")
    assert emitter.flush(10)
    emitter.close()
    client = redis.Redis.from_url(redis_url)
    records = [r for _, f in client.xrange(keys.traces) for r in decode_entry(f).records]
    client.close()
    yield records


def _one(records: list[object], kind: type, **match: object) -> object:
    [found] = [
        r
        for r in records
        if isinstance(r, kind) and all(getattr(r, k) == v for k, v in match.items())
    ]
    return found


def _again(client: redis.Redis, keys: Keys) -> None:
    """Every entry of the trace stream delivered a second time (a worker killed before
    its acknowledgement, as far as the backend can tell)."""
    for _, fields in client.xrange(keys.traces):
        client.xadd(keys.traces, fields)  # type: ignore[arg-type]


def test_langsmith_gets_the_tree_with_real_plan_times_and_no_duplicates(
    recorded: list[object], redis_client: redis.Redis, keys: Keys
) -> None:
    root = _one(recorded, PlanRecord, plan_id="root")
    child = _one(recorded, PlanRecord, plan_id="child")
    call = _one(recorded, LLMTrace)
    tool = _one(recorded, ToolCall)
    assert isinstance(root, PlanRecord) and isinstance(child, PlanRecord)
    assert isinstance(call, LLMTrace) and isinstance(tool, ToolCall)
    with LangSmithServer(api_key=API_KEY) as server:
        settings = LangSmithSettings(
            enabled=True, endpoint=server.url, api_key=API_KEY, project="fleet",
            retry_for_s=60.0, backoff_initial_s=0.05, backoff_max_s=0.2,
            request_timeout_s=2.0, concurrency=1,
        )  # fmt: skip
        for name in ("fwd-1", "fwd-2"):
            consumer = Consumer(redis_client, keys, LANGSMITH_GROUP, name, claim_idle_ms=60_000)
            loop = ForwardLoop(
                consumer, settings, loop=langsmith_loop_settings(settings, burst=True)
            )
            loop.run(threading.Event())
            loop.close()
            if name == "fwd-1":
                runs_once = dict(server.recorded.runs)
                _again(redis_client, keys)
        runs = server.recorded.runs
        assert server.duplicates() == 0
        assert set(runs) == set(runs_once)

    root_id = str(plan_run_id("root", root.root_started_at, "root"))
    child_id = str(plan_run_id("root", root.root_started_at, "child"))
    [actor_id] = [i for i, r in runs.items() if r["name"] == "actor planner"]
    assert set(runs) == {root_id, child_id, actor_id, str(call.trace_id), str(tool.call_id)}
    assert {r["trace_id"] for r in runs.values()} == {root_id}
    by = runs.__getitem__
    assert "parent_run_id" not in by(root_id) or by(root_id)["parent_run_id"] is None
    assert by(child_id)["parent_run_id"] == root_id
    assert by(actor_id)["parent_run_id"] == child_id
    assert by(str(call.trace_id))["parent_run_id"] == actor_id
    assert by(str(tool.call_id))["parent_run_id"] == actor_id
    assert (by(str(tool.call_id))["run_type"], by(actor_id)["run_type"]) == ("tool", "chain")
    assert by(str(tool.call_id))["error"] == "TimeoutError: slow"
    for run_id, run in runs.items():
        parent = run.get("parent_run_id")
        if parent:
            assert run["dotted_order"].startswith(runs[parent]["dotted_order"] + ".")
        assert run["dotted_order"].endswith(run_id.replace("-", "")) or run[
            "dotted_order"
        ].endswith(run_id)
    # The root carries the plan's real start, and its end once the end record came.
    assert _time(by(root_id)["start_time"]) == root.started_at
    assert _time(by(root_id)["end_time"]) == root.ended_at
    assert _time(by(child_id)["start_time"]) == child.started_at
    assert _time(by(child_id)["end_time"]) == child.ended_at


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_otlp_gets_child_plans_and_tools_as_spans(
    recorded: list[object], redis_client: redis.Redis, keys: Keys
) -> None:
    child = _one(recorded, PlanRecord, plan_id="child")
    assert isinstance(child, PlanRecord)
    with OtlpReceiver() as receiver:
        settings = OtlpSettings(
            endpoint=receiver.traces_url, headers={}, timeout_s=2.0, retry_for_s=60.0,
            backoff_initial_s=0.05, backoff_max_s=0.2,
        )  # fmt: skip
        consumer = Consumer(redis_client, keys, OTLP_GROUP, "otlp-1", claim_idle_ms=60_000)
        loop = OtlpLoop(
            consumer, settings, namespace=keys.namespace,
            loop=replace(otlp_loop_settings(settings), burst=True),
        )  # fmt: skip
        loop.run(threading.Event())
        loop.close()
        spans = receiver.spans()
    by_name: dict[str, Span] = {}
    for span in spans:  # a parent may arrive more than once, widened: keep the widest
        known = by_name.get(span.name)
        if known is None or span.end_time_unix_nano - span.start_time_unix_nano > (
            known.end_time_unix_nano - known.start_time_unix_nano
        ):
            by_name[span.name] = span
    assert set(by_name) == {
        "plan root", "plan child", "decision d", "invoke_agent planner", "chat gpt-4o",
        "execute_tool search",
    }  # fmt: skip
    assert len({s.trace_id for s in spans}) == 1
    assert by_name["plan root"].parent_span_id == b""
    assert by_name["plan child"].parent_span_id == by_name["plan root"].span_id
    assert by_name["decision d"].parent_span_id == by_name["plan child"].span_id
    assert by_name["execute_tool search"].parent_span_id == by_name["invoke_agent planner"].span_id
    tool = {kv.key: kv.value.string_value for kv in by_name["execute_tool search"].attributes}
    assert tool["gen_ai.operation.name"] == "execute_tool"
    assert tool["gen_ai.tool.name"] == "search"
    assert tool["error.type"] == "TimeoutError"
    names = {kv.key for span in spans for kv in span.attributes}
    assert {n for n in names if n.startswith("gen_ai.")} <= GENAI_NAMES
    # The child plan's span spans the plan's real start and end.
    start = int(child.started_at.timestamp()) * 1_000_000_000 + child.started_at.microsecond * 1000
    assert by_name["plan child"].start_time_unix_nano == start
