"""Tags, metadata, user and session on scopes and calls, and time to first token,
read back from the machine's Redis stream: inheritance through contextvars, the
merging rules, and bad values that never raise into agent code from a hook."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest
import redis
from pydantic import ValidationError

from fleettrace import LLMTrace, hooks
from fleettrace.attributes import (
    MAX_METADATA_KEYS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    REJECT_ID,
    REJECT_METADATA_KEY,
    REJECT_METADATA_TYPE,
    REJECT_METADATA_VALUE,
    REJECT_TAG_LENGTH,
    REJECT_TAG_TYPE,
    REJECT_TOO_MANY_METADATA_KEYS,
    REJECT_TOO_MANY_TAGS,
    REJECT_TTFT,
)
from fleettrace.emitter import Emitter
from tests.emitting import stream_records
from tests.factories import llm_trace


def sent(emitter: Emitter, client: redis.Redis) -> list[LLMTrace]:
    assert emitter.flush(10)
    # The traces stream also carries the plan tree's records (PlanRecord, ToolCall).
    records = stream_records(client, emitter.keys.traces)
    return [record for record in records if isinstance(record, LLMTrace)]


def test_scopes_pass_attributes_to_every_record_inside_and_merge_inner_last(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    with hooks.plan("p", tags=["prod", "eu"], metadata={"team": "search", "tier": 1}, user_id="u1"):
        with (
            hooks.decision(tags=["eu", "retry"], metadata={"tier": 2}, session_id="s1"),
            hooks.actor("planner", metadata={"step": 1.5}) as planner,
        ):
            with planner.llm("openai", "gpt-4o", tags=["call"], metadata={"ok": True}):
                pass
            hooks.record_llm_call("openai", "gpt-4o", user_id="u2")
        hooks.record_llm_call("openai", "gpt-4o")
    hooks.record_llm_call("openai", "gpt-4o")
    inner, by_call, plan_only, outside = sent(emitter, redis_client)
    assert inner.tags == ["prod", "eu", "retry", "call"]
    assert inner.metadata == {"team": "search", "tier": 2, "step": 1.5, "ok": True}
    assert (inner.user_id, inner.session_id) == ("u1", "s1")
    assert (by_call.user_id, by_call.session_id) == ("u2", "s1")
    assert plan_only.tags == ["prod", "eu"]
    assert plan_only.metadata == {"team": "search", "tier": 1}
    assert plan_only.session_id is None
    assert (outside.tags, outside.metadata, outside.user_id) == ([], {}, None)
    assert emitter.stats.rejected == {}


def test_attributes_follow_asyncio_tasks(emitter: Emitter, redis_client: redis.Redis) -> None:
    async def one(n: int) -> None:
        with hooks.actor(f"a{n}", tags=[f"task-{n}"]):
            await asyncio.sleep(0)
            hooks.record_llm_call("openai", "gpt-4o")

    async def main() -> None:
        with hooks.plan(tags=["root"]):
            await asyncio.gather(one(1), one(2))

    asyncio.run(main())
    traces = sent(emitter, redis_client)
    assert sorted(tuple(t.tags) for t in traces) == [("root", "task-1"), ("root", "task-2")]


@pytest.mark.parametrize(
    ("given", "kept", "reasons"),
    [
        ({"tags": ["ok", "x" * (MAX_TAG_CHARS + 1)]}, {"tags": ["ok"]}, {REJECT_TAG_LENGTH: 1}),
        (
            {"tags": ["ok", "", None, 3]},
            {"tags": ["ok"]},
            {REJECT_TAG_LENGTH: 1, REJECT_TAG_TYPE: 2},
        ),
        (
            {"tags": [f"t{i}" for i in range(MAX_TAGS + 3)]},
            {"tags": [f"t{i}" for i in range(MAX_TAGS)]},
            {REJECT_TOO_MANY_TAGS: 3},
        ),
        (
            {"metadata": {"a": 1, "b": [1], "c": {"d": 1}, "e": math.nan, "f": None}},
            {"metadata": {"a": 1}},
            {REJECT_METADATA_VALUE: 4},
        ),
        (
            {"metadata": {"a": "ok", 7: "x", "": "y", "n\x00": "z", "inf": -math.inf}},
            {"metadata": {"a": "ok"}},
            {REJECT_METADATA_KEY: 3, REJECT_METADATA_VALUE: 1},
        ),
        (
            {"metadata": {f"k{i}": i for i in range(MAX_METADATA_KEYS + 1)}},
            {"metadata": {f"k{i}": i for i in range(MAX_METADATA_KEYS)}},
            {REJECT_TOO_MANY_METADATA_KEYS: 1},
        ),
        ({"metadata": ["not", "a", "mapping"]}, {"metadata": {}}, {REJECT_METADATA_TYPE: 1}),
        ({"metadata": {"big": 2**60}}, {"metadata": {}}, {REJECT_METADATA_VALUE: 1}),
        ({"user_id": "", "session_id": 5}, {"user_id": None}, {REJECT_ID: 2}),
        ({"user_id": "u" * 129}, {"user_id": None}, {REJECT_ID: 1}),
        ({"ttft_ms": math.nan}, {"ttft_ms": None}, {REJECT_TTFT: 1}),
        ({"ttft_ms": -1.0}, {"ttft_ms": None}, {REJECT_TTFT: 1}),
    ],
)
def test_bad_values_on_a_call_are_dropped_and_counted_never_raised(
    emitter: Emitter, redis_client: redis.Redis, given: dict, kept: dict, reasons: dict
) -> None:
    with hooks.llm_call("openai", "gpt-4o", **given):
        pass
    [trace] = sent(emitter, redis_client)
    for name, value in kept.items():
        assert getattr(trace, name) == value
    assert emitter.stats.rejected == reasons


def test_bad_values_on_scopes_are_dropped_counted_and_logged_once(
    emitter: Emitter, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fleettrace.emitter")
    for _ in range(3):
        with (
            hooks.plan(tags=["fine", "y" * 500], metadata={"nested": {"a": 1}, "n": 1}),
            hooks.decision(user_id=None, session_id=""),  # type: ignore[arg-type]
            hooks.actor("a", tags="single"),  # a lone string is one tag, not six
        ):
            hooks.record_llm_call("openai", "gpt-4o")
    traces = sent(emitter, redis_client)
    assert [t.tags for t in traces] == [["fine", "single"]] * 3
    assert [t.metadata for t in traces] == [{"n": 1}] * 3
    assert emitter.stats.rejected == {REJECT_TAG_LENGTH: 3, REJECT_METADATA_VALUE: 3, REJECT_ID: 3}
    logged = [r.getMessage() for r in caplog.records if "invalid attribute" in r.getMessage()]
    assert len(logged) == 3  # one per reason, not one per value
    assert any("tag_length" in line and "a plan" in line for line in logged)


def test_a_scope_full_of_tags_drops_what_an_inner_scope_adds(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    outer = [f"o{i}" for i in range(MAX_TAGS)]
    with hooks.plan(tags=outer), hooks.actor("a", tags=["o1", "new"]):
        hooks.record_llm_call("openai", "gpt-4o", tags=["late"])
    [trace] = sent(emitter, redis_client)
    assert trace.tags == outer
    assert emitter.stats.rejected == {REJECT_TOO_MANY_TAGS: 2}


def test_ttft_is_the_first_marked_chunk_of_a_streamed_call(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    with hooks.llm_call("openai", "gpt-4o", streaming=True) as call:
        call.first_token()
        first = call.fields["ttft_ms"]
        call.first_token()
    with hooks.llm_call("openai", "gpt-4o"):
        pass
    streamed, plain = sent(emitter, redis_client)
    assert streamed.ttft_ms == first
    assert 0 <= streamed.ttft_ms <= streamed.latency_ms
    assert plain.ttft_ms is None


def test_record_with_a_hand_built_invalid_trace_still_raises() -> None:
    with pytest.raises(ValidationError, match="tags"):
        llm_trace(tags=["x" * (MAX_TAG_CHARS + 1)])
    with pytest.raises(ValidationError, match="metadata"):
        llm_trace(metadata={"a": [1]})
    with pytest.raises(ValidationError, match="metadata"):
        llm_trace(metadata={"a": math.nan})
    with pytest.raises(ValidationError, match="ttft_ms"):
        llm_trace(ttft_ms=math.inf)
