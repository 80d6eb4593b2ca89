"""The plan tree on the agent side, against the machine's Redis: plan scopes and tokens
place every record, tools and plans become records of their own, and they travel in
format version 3 entries of their own kinds; bad tokens and bad entries never raise
into agent code or pass as good records."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
import redis
from pydantic import ValidationError

from fleettrace import LLMTrace, hooks, plan_scope
from fleettrace.batch_script import APPLY_BATCH_LUA
from fleettrace.batching import encode_calls, entry_bytes
from fleettrace.codec import Kind, decode_entry, encode_batch
from fleettrace.emitter import Emitter
from fleettrace.keys import Keys
from fleettrace.model import MAX_LATENCY_MS
from fleettrace.plan_token import MAX_PLAN_DEPTH, TOKEN_PREFIX, parse_token, root_place
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.forward.langsmith import runs as day_runs
from fleettrace_worker.forward.langsmith import tree_runs
from tests.emitting import emitter_figures, stream_records


def _records(emitter: Emitter, client: redis.Redis) -> list[object]:
    assert emitter.flush(10)
    return stream_records(client, emitter.keys.traces)  # type: ignore[return-value]


def _of(records: list[object], kind: type) -> list:  # type: ignore[type-arg]
    return [r for r in records if isinstance(r, kind)]


def test_nested_plans_place_every_record_under_their_root(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    with hooks.plan("root") as root:
        with hooks.phase("think"):
            pass
        with hooks.plan("child") as child, hooks.plan("grandchild") as grandchild:
            assert hooks.current_plan_token() == grandchild.token()
            with hooks.decision("d"), hooks.actor("a"):
                trace = hooks.record_llm_call("openai", "gpt-4o", prompt_tokens=3)
                with pytest.raises(KeyError), hooks.tool("lookup"):
                    raise KeyError("gone")
    assert hooks.current_plan_token() is None
    records = _records(emitter, redis_client)
    [call] = _of(records, LLMTrace)
    assert call.trace_id == trace.trace_id  # priced on the way, so not equal as a whole
    assert (call.root_plan_id, call.plan_path) == ("root", ["root", "child"])
    assert call.root_started_at == root.state.started_at  # type: ignore[union-attr]
    [tool] = _of(records, ToolCall)
    assert (tool.tool, tool.plan_id, tool.decision_id, tool.actor) == (
        "lookup",
        "grandchild",
        "d",
        "a",
    )
    assert (tool.outcome, tool.error) == ("error", "KeyError: 'gone'")
    assert (tool.root_plan_id, tool.plan_path) == ("root", ["root", "child"])
    plans = {p.plan_id: p for p in _of(records, PlanRecord)}
    assert set(plans) == {"root", "child", "grandchild"}
    assert plans["root"].parent_plan_id is None and plans["root"].plan_path == []
    assert plans["child"].parent_plan_id == "root"
    assert plans["grandchild"].plan_path == ["root", "child"]
    assert plans["grandchild"].parent_plan_id == child.plan_id == "child"
    assert "think" in plans["root"].phases_ms
    assert all(p.root_started_at == plans["root"].started_at for p in plans.values())
    assert plans["root"].ended_at >= plans["child"].ended_at
    # The sender made them from what the scopes captured; a scope's own record is the
    # same, made from the same capture when asked for.
    assert (root.record, child.record, grandchild.record) == (
        plans["root"],
        plans["child"],
        plans["grandchild"],
    )
    # Every record sent is counted: one call, one tool, three plans, and the samples.
    figures = emitter_figures(redis_client, emitter.keys)
    assert figures["records"] == emitter.stats.sent == emitter.stats.accepted


def test_a_token_makes_a_child_in_another_context(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    with hooks.plan("root") as root, hooks.plan("mid") as mid:
        token = mid.token()
    assert token.startswith(TOKEN_PREFIX) and token.isascii() and len(token) < 200

    async def elsewhere() -> None:  # a fresh context, as another process would have
        with hooks.plan("remote", parent=token) as remote:
            assert remote.parent == "mid"
            hooks.record_llm_call("openai", "gpt-4o")

    asyncio.run(elsewhere())
    records = _records(emitter, redis_client)
    [call] = _of(records, LLMTrace)
    assert (call.plan_id, call.root_plan_id, call.plan_path) == ("remote", "root", ["root", "mid"])
    assert call.root_started_at == root.state.started_at  # type: ignore[union-attr]
    [remote] = [p for p in _of(records, PlanRecord) if p.plan_id == "remote"]
    assert remote.parent_plan_id == "mid"


def test_a_plain_parent_id_still_makes_a_child(emitter: Emitter, redis_client: redis.Redis) -> None:
    with hooks.plan("p-2", parent="remote-plan") as plan:
        hooks.record_llm_call("openai", "gpt-4o")
    assert plan.parent == "remote-plan"
    [call] = _of(_records(emitter, redis_client), LLMTrace)
    assert (call.root_plan_id, call.plan_path) == ("remote-plan", ["remote-plan"])


@pytest.mark.parametrize(
    "token",
    [
        TOKEN_PREFIX,
        TOKEN_PREFIX + "!!!not base64",
        TOKEN_PREFIX + base64.urlsafe_b64encode(b"[1, 2]").decode(),
        TOKEN_PREFIX + base64.urlsafe_b64encode(b'{"r": "a", "s": 1, "p": ["b"]}').decode(),
        TOKEN_PREFIX + base64.urlsafe_b64encode(b'{"r": "a", "s": "1", "p": ["a"]}').decode(),
        TOKEN_PREFIX
        + base64.urlsafe_b64encode(b'{"r": "a\\u0000", "s": 1, "p": ["a\\u0000"]}').decode(),
        TOKEN_PREFIX + base64.urlsafe_b64encode(b'{"r": "a", "s": 1e30, "p": ["a"]}').decode(),
        TOKEN_PREFIX
        + base64.urlsafe_b64encode(b'{"r": "a", "s": 99999999999999999999, "p": ["a"]}').decode(),
        TOKEN_PREFIX + "A" * 100_000,
    ],
)
def test_a_damaged_token_never_raises_and_the_plan_records_as_a_root(
    emitter: Emitter, redis_client: redis.Redis, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert parse_token(token) is None
    with hooks.plan("lost", parent=token) as plan:
        hooks.record_llm_call("openai", "gpt-4o")
    assert plan.parent is None
    assert "could not read the plan token" in caplog.text
    records = _records(emitter, redis_client)
    [call] = _of(records, LLMTrace)
    assert (call.root_plan_id, call.plan_path) == ("lost", [])
    assert [p.plan_id for p in _of(records, PlanRecord)] == ["lost"]


def test_tokens_round_trip_and_a_deep_tree_keeps_its_root_and_parent() -> None:
    place = root_place("r", datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC))
    for depth in range(MAX_PLAN_DEPTH + 10):
        place = place.child(f"p{depth}")
        assert parse_token(place.token()) == place
    assert len(place.path) == MAX_PLAN_DEPTH + 1
    assert place.path[0] == "r" and place.path[-2] == f"p{MAX_PLAN_DEPTH + 8}"
    body = json.loads(base64.urlsafe_b64decode(place.token()[len(TOKEN_PREFIX) :] + "=="))
    assert set(body) == {"r", "s", "p"}  # ids and a time, nothing else


def test_tree_records_travel_in_version_three_entries_of_their_own_kinds(
    emitter: Emitter, redis_client: redis.Redis
) -> None:
    with hooks.plan("p"), hooks.tool("t"):
        hooks.record_llm_call("openai", "gpt-4o")
    assert emitter.flush(10)
    kinds = [
        (fields[b"v"], fields[b"k"], int(fields[b"n"]))
        for _, fields in redis_client.xrange(emitter.keys.traces)
    ]
    assert sorted(kinds) == [(b"3", b"o", 1), (b"3", b"p", 1), (b"3", b"t", 1)]


def test_a_version_two_entry_may_not_hold_tree_kinds_and_bad_tree_records_are_named() -> None:
    tool = ToolCall(tool="search")
    entry = encode_batch(Kind.TOOL, [tool], "0" * 32)
    assert decode_entry(entry).records == [tool]
    entry[b"v"] = b"2"
    with pytest.raises(Exception, match="field 'k' must be 't' or 'm' in a version 2 entry"):
        decode_entry(entry)
    bad = dict(json.loads(encode_batch(Kind.TOOL, [tool], "0" * 32)[b"d"]))
    bad["outcome"] = "maybe"
    good = json.loads(encode_batch(Kind.TOOL, [tool], "0" * 32)[b"d"])
    no_tool = {k: v for k, v in good.items() if k != "tool"}
    no_error = {k: v for k, v in good.items() if k != "error"}
    lines = [json.dumps(r).encode() for r in (bad, no_tool, no_error)]
    entry = {b"v": b"3", b"k": b"o", b"b": b"0" * 32, b"n": b"3", b"d": b"\n".join(lines)}
    batch = decode_entry(entry)
    assert batch.records == []
    assert batch.errors[0].reason.startswith("outcome: Input should be 'ok' or 'error'")
    assert batch.errors[1].reason == "tool: Field required"
    # A default must not stand in for a value lost on the way.
    assert batch.errors[2].reason == "error: Field missing from the record"


def test_plan_records_refuse_an_inconsistent_place() -> None:
    at = datetime(2026, 12, 3, tzinfo=UTC)
    with pytest.raises(ValidationError, match="parent_plan_id must be the last plan"):
        PlanRecord(plan_id="c", parent_plan_id="x", root_plan_id="r", root_started_at=at,
                   plan_path=["r"], started_at=at, ended_at=at)  # fmt: skip
    with pytest.raises(ValidationError, match="ended_at must not be before started_at"):
        PlanRecord(plan_id="r", root_plan_id="r", root_started_at=at, started_at=at,
                   ended_at=at.replace(year=2025))  # fmt: skip
    with pytest.raises(ValidationError, match="outcome 'error'"):
        ToolCall(tool="t", error="boom")


def test_long_plans_are_recorded_and_a_tool_longer_than_a_day_is_clamped() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    two_days = PlanRecord(
        plan_id="long", root_plan_id="long", root_started_at=at, started_at=at,
        ended_at=at + timedelta(days=2), duration_ms=2 * 86_400_000.0,
        phases_ms={"crawl": 1.5 * 86_400_000.0},
    )  # fmt: skip
    assert two_days.duration_ms == 172_800_000.0
    call = plan_scope.tool_call("t", 3 * 86_400.0, None, plan_id=None, decision_id=None, actor=None)
    assert call.duration_ms == MAX_LATENCY_MS


def test_tree_records_over_the_entry_limit_split_and_unencodable_ones_are_counted(
    keys: Keys, redis_client: redis.Redis
) -> None:
    tools = [ToolCall(tool="search", error="E" * 4000, outcome="error") for _ in range(10)]
    bad_tool = ToolCall.model_construct(**{**tools[0].__dict__, "error": "a \ud800 b"})
    at = datetime(2026, 12, 3, tzinfo=UTC)
    plan = PlanRecord(plan_id="p", root_plan_id="p", root_started_at=at, started_at=at, ended_at=at)
    seqs = iter(range(1, 100))
    encoded = encode_calls(
        keys, "e1", lambda: next(seqs), [*tools, bad_tool, plan], 0, max_entry_bytes=10_000
    )
    assert encoded.unencodable == 1
    # The dropped record is reported by a call of its own, then the tools two by two
    # (each about 4 kB), then the plan.
    assert [c.records for c in encoded.calls] == [0, 2, 2, 2, 2, 2, 1]
    assert encoded.calls[0].dropped == 1
    script = redis_client.register_script(APPLY_BATCH_LUA)
    for call in encoded.calls:
        assert script(keys=call.keys, args=call.args) == 1
    written = [fields for _, fields in redis_client.xrange(keys.traces)]
    assert all(entry_bytes(e) <= 10_000 for e in written)
    assert [e[b"k"] for e in written] == [b"o"] * 5 + [b"p"]
    records = stream_records(redis_client, keys.traces)
    assert [r.call_id for r in records[:-1]] == [t.call_id for t in tools]  # type: ignore[union-attr]
    assert emitter_figures(redis_client, keys) == {"records": 11, "batches": 6, "dropped": 1}


def test_edges_of_the_tree_mappings() -> None:
    at = datetime(2026, 12, 3, tzinfo=UTC)
    # A token whose root start is past any date reads as no token.
    body = b'{"r": "a", "s": 9000000000000000000, "p": ["a"]}'
    assert parse_token(TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode()) is None
    with pytest.raises(ValidationError, match="root_plan_id must be the first plan"):
        PlanRecord(plan_id="p", root_plan_id="x", root_started_at=at, started_at=at, ended_at=at)
    # A plan record that cannot be built is logged, never raised, and nothing is sent.
    state = plan_scope.PlanState("p", None, root_place("p", at), at)
    assert state.end_record(-1.0, None) is None
    # LangSmith: a tool outside any tree is a trace of its own; a call without a root
    # keeps the day root; a path cut at the depth limit still starts at the root.
    lone = ToolCall(tool="t")
    [run] = tree_runs.runs_for(lone, "p")
    assert (run["id"], run["trace_id"], run["run_type"]) == (lone.call_id, lone.call_id, "tool")
    call = LLMTrace(provider="openai", model="gpt-4o", plan_id="old")
    assert tree_runs.runs_for(call, "p") == day_runs.runs_for(call, "p")
    chain = tree_runs.plan_chain("r", at, ["x", "y"], "z", "p")
    assert [r["name"] for r in chain] == ["plan r", "plan x", "plan y", "plan z"]
    assert all(chain[i]["parent_run_id"] == chain[i - 1]["id"] for i in range(1, 4))
