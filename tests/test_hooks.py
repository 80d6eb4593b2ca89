"""Hooks: nesting, contextvars across threads and tasks, decorators, exceptions."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from pydantic import ValidationError

import fleettrace
from fleettrace import LLMTrace, MetricKey, MetricSample, hooks
from fleettrace.emitter import Emitter
from fleettrace.keys import EMITTER_DROPPED
from tests.emitting import live_hash, stream_records


def recorded(emitter: Emitter, client: redis.Redis) -> tuple[list[LLMTrace], list[MetricSample]]:
    """The LLM calls and metric samples the hooks recorded (the trace stream's tool
    calls and plan records are tested in test_plan_scope.py)."""
    assert emitter.flush(10)
    records = stream_records(client, emitter.keys.traces)
    traces = [r for r in records if isinstance(r, LLMTrace)]
    samples = stream_records(client, emitter.keys.metrics)
    return traces, samples  # type: ignore[return-value]


def of(samples: list[MetricSample], key: MetricKey) -> list[MetricSample]:
    return [s for s in samples if s.key is key]


def test_nested_hooks_stamp_plan_decision_and_actor(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    with hooks.plan("plan-1") as outer:
        assert hooks.current_plan_id() == "plan-1"
        with hooks.phase("retrieve"):
            time.sleep(0.01)
        with hooks.decision("d-1") as chosen, hooks.actor("planner") as planner:
            assert (chosen.decision_id, hooks.current_actor()) == ("d-1", "planner")
            with planner.llm("openai", "gpt-4o", streaming=True) as call:
                call.update(prompt_tokens=1000, completion_tokens=500, retry_count=2)
        with hooks.plan() as child:
            assert child.parent == "plan-1"
            assert hooks.current_decision_id() is None
            hooks.record_llm_call("anthropic", "claude-3-5-sonnet-latest", prompt_tokens=3)
        assert hooks.current_plan_id() == "plan-1"
    assert hooks.current_plan_id() is None
    assert outer.plan_id == "plan-1"
    assert call.trace is not None

    traces, samples = recorded(emitter, redis_client)
    first, second = traces
    # Priced by the sender thread: the caller's record is otherwise the same.
    assert call.trace.cost_usd is None
    assert first == call.trace.model_copy(update={"cost_usd": first.cost_usd})
    assert (first.plan_id, first.decision_id, first.actor) == ("plan-1", "d-1", "planner")
    assert (first.prompt_tokens, first.retry_count, first.streaming) == (1000, 2, True)
    assert first.cost_usd == pytest.approx(0.0075)
    # The id is of the call's end, as its time is: the same millisecond.
    assert first.trace_id.version == 7
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert first.trace_id.int >> 80 == (first.started_at - epoch) // timedelta(milliseconds=1)
    assert first.latency_ms > 0
    assert (second.plan_id, second.decision_id, second.actor) == (child.plan_id, None, None)
    assert len(child.plan_id) == 32

    durations = {s.labels["phase"]: s for s in of(samples, MetricKey.PLAN_DURATION_SECONDS)}
    assert durations["retrieve"].value >= 0.01
    assert durations["retrieve"].plan_id == "plan-1"
    totals = [
        s for s in of(samples, MetricKey.PLAN_DURATION_SECONDS) if s.labels["phase"] == "total"
    ]
    assert sorted(s.plan_id for s in totals) == sorted(["plan-1", child.plan_id])  # type: ignore[type-var]
    assert [s.labels for s in of(samples, MetricKey.PLAN_DECISIONS_COUNT)] == [{"plan": "plan-1"}]
    assert [s.labels for s in of(samples, MetricKey.PLAN_CHILD_PLANS_COUNT)] == [{"plan": "plan-1"}]
    [invocation] = of(samples, MetricKey.ACTOR_INVOCATION_DURATION_MS)
    assert invocation.labels == {"actor": "planner"}


def test_explicit_parent_and_decision_outside_a_plan(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    with hooks.decision() as loose:
        assert hooks.current_decision_id() == loose.decision_id
    with hooks.plan("p-2", parent="remote-plan"):
        pass
    _, samples = recorded(emitter, redis_client)
    assert of(samples, MetricKey.PLAN_DECISIONS_COUNT) == []  # no plan to count it on
    assert [s.labels for s in of(samples, MetricKey.PLAN_CHILD_PLANS_COUNT)] == [
        {"plan": "remote-plan"}
    ]


def test_context_follows_asyncio_tasks_and_threads(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    async def agent(plan_id: str) -> None:
        with hooks.plan(plan_id):
            await asyncio.sleep(0.01)  # let the other task interleave
            async with hooks.actor(f"actor-{plan_id}"):
                await asyncio.to_thread(hooks.record_llm_call, "openai", "gpt-4o")
                await asyncio.sleep(0)
                hooks.record_llm_call("openai", "gpt-4o")

    async def fleet() -> None:
        await asyncio.gather(agent("a"), agent("b"), agent("c"))

    asyncio.run(fleet())

    with hooks.plan("threaded"):
        context = contextvars.copy_context()
        inherited = threading.Thread(target=context.run, args=(hooks.record_llm_call, "x", "y"))
        bare = threading.Thread(target=hooks.record_llm_call, args=("x", "y"))
        inherited.start()
        inherited.join()
        bare.start()
        bare.join()

    traces, _ = recorded(emitter, redis_client)
    pairs = sorted((t.plan_id or "-", t.actor or "-") for t in traces)
    assert pairs == [
        ("-", "-"),  # a plain thread starts with an empty context
        ("a", "actor-a"),
        ("a", "actor-a"),
        ("b", "actor-b"),
        ("b", "actor-b"),
        ("c", "actor-c"),
        ("c", "actor-c"),
        ("threaded", "-"),
    ]


class Boom(Exception):
    pass


def test_tool_decorators_count_outcomes_and_reraise_unchanged(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    error = Boom("no such file")

    @hooks.tool("grep")
    def grep(fail: bool) -> str:
        if fail:
            raise error
        return "found"

    @hooks.tool("fetch", emitter=emitter)
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        if n < 0:
            raise error
        return n * 2

    assert grep.__name__ == "grep"
    assert grep(False) == "found"
    with pytest.raises(Boom) as caught:
        grep(True)
    assert caught.value is error

    async def run() -> list[int | BaseException]:
        return await asyncio.gather(fetch(1), fetch(2), fetch(-1), return_exceptions=True)

    assert asyncio.run(run()) == [2, 4, error]

    _, samples = recorded(emitter, redis_client)
    outcomes = sorted(
        (s.labels["tool"], s.labels["outcome"]) for s in of(samples, MetricKey.TOOL_ERROR_RATE)
    )
    assert outcomes == [
        ("fetch", "error"),
        ("fetch", "ok"),
        ("fetch", "ok"),
        ("grep", "error"),
        ("grep", "ok"),
    ]
    durations = of(samples, MetricKey.TOOL_INVOCATION_DURATION_MS)
    assert sorted(s.labels["tool"] for s in durations) == ["fetch"] * 3 + ["grep"] * 2


def test_llm_call_records_errors_and_reraises(emitter: Emitter, redis_client: redis.Redis) -> None:
    error = TimeoutError("upstream took too long")
    with (
        pytest.raises(TimeoutError) as caught,
        fleettrace.llm_call("openai", "gpt-4o", prompt_tokens=10, retry_count=3) as call,
    ):
        raise error
    assert caught.value is error

    @fleettrace.llm_call("openai", "gpt-4o-mini", latency_ms=5.0)
    async def ask() -> str:
        return "ok"

    assert asyncio.run(ask()) == "ok"

    traces, _ = recorded(emitter, redis_client)
    failed, decorated = traces
    assert failed == call.trace.model_copy(update={"cost_usd": failed.cost_usd})
    assert failed.cost_usd == fleettrace.price_trace(call.trace)
    assert failed.error == "TimeoutError: upstream took too long"
    assert failed.error_type == "TimeoutError"
    assert failed.retry_count == 3
    assert (decorated.model, decorated.latency_ms, decorated.error) == ("gpt-4o-mini", 5.0, None)


def test_context_index_sandbox_and_hot_tokens(emitter: Emitter, redis_client: redis.Redis) -> None:
    with hooks.context_build("warm"), hooks.index_query("vector"), hooks.sandbox("rollback"):
        pass
    hooks.set_hot_context_tokens(1200)
    hooks.set_hot_context_tokens(900, emitter=emitter)
    _, samples = recorded(emitter, redis_client)
    assert [s.labels for s in of(samples, MetricKey.CONTEXT_BUILD_DURATION_MS)] == [
        {"tier": "warm"}
    ]
    assert [s.labels for s in of(samples, MetricKey.INDEX_QUERY_DURATION_MS)] == [
        {"backend": "vector"}
    ]
    assert [s.labels for s in of(samples, MetricKey.SANDBOX_OPERATION_DURATION_MS)] == [
        {"operation": "rollback"}
    ]
    assert [s.value for s in of(samples, MetricKey.CONTEXT_TOKENS_USED)] == [1200.0, 900.0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: hooks.context_build("lukewarm"),
            "tier must be one of cold, hot, warm; got 'lukewarm'",
        ),
        (lambda: hooks.index_query("sql"), "backend must be one of graph, text, vector; got 'sql'"),
        (lambda: hooks.sandbox("delete"), "operation must be one of commit, create, rollback"),
        (lambda: hooks.set_hot_context_tokens(-1), "tokens must be a non-negative integer"),
        (lambda: hooks.tool(""), "tool must be a string of 1-128 characters"),
        (lambda: hooks.phase("p" * 129), "phase must be a string of 1-128 characters"),
        (lambda: hooks.actor("a\x00"), "actor must be a string"),
        (lambda: hooks.plan(123), "plan_id must be a string"),
        (lambda: hooks.plan(parent=""), "parent must be a string"),
        (lambda: hooks.set_hot_context_tokens(1.5), "tokens must be a non-negative integer"),  # type: ignore[arg-type]
    ],
)
def test_unknown_label_values_raise_at_the_call(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_exported_names() -> None:
    for name in (
        "plan",
        "phase",
        "decision",
        "actor",
        "llm_call",
        "tool",
        "context_build",
        "index_query",
        "sandbox",
        "set_hot_context_tokens",
        "record_llm_call",
    ):
        assert getattr(fleettrace, name) is getattr(hooks, name)
        assert name in fleettrace.__all__


def test_a_failure_to_record_never_hides_the_blocks_own_exception(
    emitter: Emitter, caplog: pytest.LogCaptureFixture
) -> None:
    error = Boom("the real problem")
    emitter.close()
    with pytest.raises(Boom) as caught, hooks.llm_call("openai", "gpt-4o", emitter=emitter):
        raise error
    assert caught.value is error
    assert "fleettrace could not record" in caplog.text
    with pytest.raises(Boom), hooks.tool("grep", emitter=emitter):
        raise error
    with pytest.raises(fleettrace.EmitterClosed), hooks.tool("grep", emitter=emitter):
        pass
    with pytest.raises(Boom), hooks.actor("planner", emitter=emitter, tags=["t"]):
        raise error
    with pytest.raises(fleettrace.EmitterClosed), hooks.actor("planner", emitter=emitter):
        pass
    # The actor's scope ended either way.
    assert hooks.current_actor() is None
    assert fleettrace.attributes.current.get().tags == ()


def test_values_a_call_record_cannot_hold_are_left_out_and_counted_never_raised(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    """The hook only captures; the sender thread validates. A bad token count reads as
    unknown (never zero), a bad or unknown field is left out, a detail larger than its
    total drops the details; each is counted by reason, and the rest of the call is
    recorded as given. A call whose model is not a name cannot be recorded: it is
    dropped and counted (as is one whose model is not even hashable), and the
    caller's block still ends normally."""
    with hooks.llm_call("openai", "gpt-4o") as negative:
        negative.update(prompt_tokens=-1, completion_tokens=7, retry_count=2)
    with hooks.llm_call("openai", "gpt-4o") as odd:
        odd.update(prompt_tokens=5, colour="blue", latency_ms=-3.0, streaming="yes")
        odd.update(trace_id="not a uuid")  # the hook's own id stands in
    with hooks.llm_call("openai", "gpt-4o") as detailed:
        detailed.update(prompt_tokens=10, completion_tokens=1, reasoning_tokens=2)
    with hooks.llm_call("openai", "") as nameless:
        nameless.update(prompt_tokens=1)
    with hooks.llm_call("openai", ["gpt-4o"]) as listed:  # type: ignore[arg-type]
        listed.update(prompt_tokens=1)
    traces, _ = recorded(emitter, redis_client)
    by_id = {t.trace_id: t for t in traces}
    assert len(traces) == 3
    assert nameless.ended and nameless.trace is None
    assert listed.ended and listed.trace is None
    first = by_id[negative.trace.trace_id]  # type: ignore[union-attr]
    assert (first.prompt_tokens, first.completion_tokens, first.retry_count) == (None, 7, 2)
    assert first.cost_usd is None  # unknown input: unpriced, not free
    second = by_id[odd.trace.trace_id]  # type: ignore[union-attr]
    assert (second.prompt_tokens, second.streaming) == (5, False)
    assert second.latency_ms >= 0
    third = by_id[detailed.trace.trace_id]  # type: ignore[union-attr]
    assert (third.prompt_tokens, third.completion_tokens, third.reasoning_tokens) == (10, 1, None)
    stats = emitter.stats
    assert stats.rejected == {
        "invalid_trace_id": 1,
        "invalid_prompt_tokens": 1,
        "unknown_field": 1,
        "invalid_latency_ms": 1,
        "invalid_streaming": 1,
        "detail_over_total": 1,
    }
    assert (stats.accepted, stats.sent, stats.dropped) == (5, 3, 2)
    assert int(redis_client.hget(emitter.keys.emitter, EMITTER_DROPPED) or 0) == 2


def test_a_call_without_usage_records_unknown_tokens_and_no_cost(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    """A stream without usage, or an error before any usage: None does not raise into
    agent code, and the record says unknown (not zero) and unpriced."""
    with fleettrace.llm_call("openai", "gpt-4o", streaming=True) as streamed:
        streamed.update(prompt_tokens=None, completion_tokens=None)
    with pytest.raises(ConnectionError), fleettrace.llm_call("openai", "gpt-4o") as failed:
        failed.update(prompt_tokens=None)
        raise ConnectionError("reset by peer")
    with fleettrace.llm_call("openai", "gpt-4o") as detailed:
        detailed.update(
            prompt_tokens=10_000,
            cache_read_tokens=9_000,
            completion_tokens=100,
            reasoning_tokens=60,
        )
    traces, _ = recorded(emitter, redis_client)
    by_id = {t.trace_id: t for t in traces}
    unknown = by_id[streamed.trace.trace_id]  # type: ignore[union-attr]
    assert (unknown.prompt_tokens, unknown.completion_tokens, unknown.cost_usd) == (
        None,
        None,
        None,
    )
    assert (unknown.tokens_known, unknown.cost_known) == (False, False)
    errored = by_id[failed.trace.trace_id]  # type: ignore[union-attr]
    assert (errored.prompt_tokens, errored.completion_tokens, errored.cost_usd) == (None, 0, None)
    assert errored.error == "ConnectionError: reset by peer"
    priced = by_id[detailed.trace.trace_id]  # type: ignore[union-attr]
    assert (priced.cache_read_tokens, priced.reasoning_tokens) == (9_000, 60)
    assert priced.cost_usd == fleettrace.price_trace(detailed.trace)  # type: ignore[arg-type]
    tokens = live_hash(redis_client, emitter.keys, "actor.token_usage")
    labels = "provider=openai,model=gpt-4o,token_type="
    assert tokens[(labels + "unknown", "count")] == "2"
    assert tokens[(labels + "prompt", "count")] == "1"  # only the call that reported it
    assert float(tokens[(labels + "prompt", "sum")]) == 10_000
    assert tokens[(labels + "completion", "count")] == "2"  # 0 reported by the failed call
    assert float(tokens[(labels + "cache_read", "sum")]) == 9_000
    assert float(tokens[(labels + "reasoning", "sum")]) == 60
    assert (labels + "cache_write", "count") not in tokens  # not reported: not counted


def test_record_still_raises_for_a_hand_built_invalid_trace(emitter: Emitter) -> None:
    with pytest.raises(ValidationError, match="reasoning_tokens must not exceed"):
        emitter.record(
            LLMTrace(provider="openai", model="gpt-4o", completion_tokens=1, reasoning_tokens=2)
        )


def test_label_dicts_are_shared_per_name_up_to_a_bound_and_right_past_it() -> None:
    """Actors and tools share one label dict per name (a buffered sample holds a
    reference); past the bound of names a span gets a dict of its own, still right."""
    first = [hooks.actor(f"bound-actor-{i}") for i in range(1_100)]
    again = [hooks.actor(f"bound-actor-{i}") for i in range(1_100)]
    assert all(a.labels == {"actor": f"bound-actor-{i}"} for i, a in enumerate(again))
    assert first[0].labels is again[0].labels
    assert first[-1].labels == again[-1].labels
    tools = [hooks.tool(f"bound-tool-{i}") for i in range(1_100)]
    assert all(t.labels == {"tool": f"bound-tool-{i}"} for i, t in enumerate(tools))
    assert hooks.tool("bound-tool-0").labels is tools[0].labels
