"""The least-privilege Redis users of docs/security.md (the exact lines, on a
private Redis): an agent writes only under its own prefix and cannot touch another
producer's keys, the budget line reads counters and nothing else, and a wrong password
or an odd user name is a clear failure."""

from __future__ import annotations

import re
import uuid

import pytest
import redis

from fleettrace.batch_script import BatchCall
from fleettrace.batching import encode_calls
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import APPLY_FUNCTION, Keys, plan_field
from fleettrace.live import is_over_budget, plan_cost_usd, read_live
from fleettrace.plans import read_plan
from tests.acl import (
    AGENT,
    BUDGET_AGENT,
    NS,
    WORKER,
    Secured,
    _bobs_records,
    _own_keys,
    _snapshot,
    create_user,
    documented_acl_lines,
    rules,
)
from tests.factories import _trace
from tests.waiting import wait_until
from tests.worker_helpers import fleettrace, worker_env


def test_the_page_has_exactly_the_tested_lines() -> None:
    assert set(documented_acl_lines()) == {AGENT, BUDGET_AGENT, WORKER}
    for template in (AGENT, BUDGET_AGENT):
        line = documented_acl_lines()[template]
        # Only the namespace, the user name and the password vary.
        assert f"~{{fleettrace}}:p:{template}:*" in line.split()
        assert not {"+eval", "+evalsha", "+script|load", "+function|load", "+@all"} & set(
            line.split()
        )


def test_an_agent_writes_only_under_its_own_prefix(secured: Secured) -> None:
    with secured.emitter("alice") as em:
        for i in range(20):
            em.record(_trace(i, cost=0.1))
        em.observe("tool.invocation_duration_ms", 12.0, {"tool": "search"})
        em.observe("plan.decisions_count", 1, {"plan": "plan-0"})
        assert em.flush(10)
        assert em.stats.send_failures == 0
        assert em.keys.producer == "alice"  # from ACL WHOAMI
    written = _own_keys(secured.admin, secured.keys)
    alice = secured.keys.for_producer("alice")
    assert written and all(k.startswith(alice.producer_prefix + ":") for k in written)
    assert {alice.traces, alice.metrics, alice.emitter} <= written
    assert secured.admin.hgetall(alice.emitter)[b"records"] == b"22"


def test_the_issue_commands_cannot_touch_another_producers_keys(secured: Secured) -> None:
    before = _bobs_records(secured)
    bob = secured.keys.for_producer("bob")
    cost_field = plan_field("plan.cost_usd", "", "sum")
    alice = secured.client("alice")
    legacy_traces, legacy_metrics = secured.keys.legacy_streams
    refused = [
        # The table of the issue, aimed at another producer's keys.
        ("XADD", bob.traces, "MAXLEN", "0", "*", "v", "junk"),
        ("SET", bob.metrics, "x", "PX", "1"),
        ("SET", bob.live("actor.token_usage"), "x"),
        ("HSET", bob.plan("shared"), cost_field, "0"),
        ("HINCRBYFLOAT", bob.plan("shared"), cost_field, "-1000"),
        ("SET", bob.emitter_seq(str(before["emitter_id"])), "999999"),
        ("SET", bob.emitter_seq("next-emitter"), "1"),
        ("SADD", bob.dirty, "p:shared"),
        ("SREM", bob.dirty, "p:shared"),
        # ...at the worker's aggregates, which readers read while a worker runs.
        ("HSET", secured.keys.aggregate_plan("shared"), cost_field, "0"),
        ("DEL", secured.keys.aggregate_plan("shared")),
        ("ZADD", secured.keys.aggregate_plan_costs, "0", "shared"),
        ("SET", secured.keys.aggregate_fresh, "1"),
        ("HSET", secured.keys.aggregate_live("actor.token_usage"), "x|count", "-1"),
        ("HSET", secured.keys.aggregate_seen("bob", "actor.token_usage"), "x|count", "9"),
        # ...at the namespace's shared keys and the layout before this one.
        ("XADD", legacy_traces, "MAXLEN", "0", "*", "v", "junk"),
        ("SET", legacy_metrics, "x"),
        ("SADD", secured.keys.producers, "ghost"),
        ("DEL", secured.keys.producers),
        ("XADD", secured.keys.dead_letters("persist"), "*", "v", "1"),
        ("SET", secured.keys.worker_health("w"), "{}"),
        # ...and reads, deletes and administration.
        ("XRANGE", bob.traces, "-", "+"),
        ("XLEN", bob.traces),
        ("HGETALL", bob.plan("shared")),
        ("GET", bob.emitter_seq(str(before["emitter_id"]))),
        ("DEL", bob.traces),
        ("UNLINK", bob.plan("shared")),
        ("XTRIM", bob.traces, "MAXLEN", "0"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        # No code of its own on the server: no script, no function.
        ("SCRIPT", "LOAD", "while true do end"),
        ("EVAL", "while true do end", "0"),
        ("EVALSHA", "0" * 40, "0"),
        ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('f', function() end)"),
        ("FUNCTION", "DELETE", "fleettrace"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "LIST"),
    ]
    try:
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                alice.execute_command(*command)
        # The batch function itself, called with another producer's keys.
        [call] = build_fake_call(bob)
        with pytest.raises(redis.exceptions.ResponseError, match=r"NOPERM|no permissions"):
            alice.fcall(APPLY_FUNCTION, len(call.keys), *call.keys, *call.args)
    finally:
        alice.close()
    after = _bobs_records_unchanged(secured, bob)
    before.pop("emitter_id")
    assert after == before
    assert not secured.admin.exists(legacy_traces, legacy_metrics, secured.keys.producers)
    assert plan_cost_usd(secured.admin, bob, "shared") == pytest.approx(5.0)


def build_fake_call(keys: Keys) -> list[BatchCall]:
    return encode_calls(keys, "forged", lambda: 1, [_trace(0, plan="shared", cost=1.0)], 0).calls


def _bobs_records_unchanged(secured: Secured, bob: Keys) -> dict[str, object]:
    return _snapshot(secured.admin, bob)


def test_the_budget_line_reads_counters_and_nothing_else(secured: Secured) -> None:
    _bobs_records(secured)
    secured.admin.sadd(secured.keys.producers, "bob")  # as the worker would
    bob = secured.keys.for_producer("bob")
    with secured.emitter("carol") as em:
        em.record(_trace(0, plan="shared", cost=0.5))
        assert em.flush(10)
        assert em.stats.send_failures == 0
    carol = secured.client("carol")
    mine = secured.keys.for_producer("carol")  # a reader adds its own producer's counts
    try:
        assert plan_cost_usd(carol, mine, "shared") == pytest.approx(5.5)
        assert is_over_budget(carol, mine, "shared", budget_usd=5.0)
        assert read_live(carol, mine)
        plan = read_plan(carol, mine, "shared")
        assert plan is not None and plan.priced_calls == 6
        for command in (
            ("XRANGE", bob.traces, "-", "+"),
            ("XADD", bob.traces, "MAXLEN", "0", "*", "v", "1"),
            ("HINCRBYFLOAT", bob.plan("shared"), "plan.cost_usd||sum", "-5"),
            ("HGETALL", bob.emitter),
            ("SADD", secured.keys.producers, "ghost"),
            ("EVAL", "return 1", "0"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                carol.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            carol.get(bob.emitter_seq("x"))
    finally:
        carol.close()


def test_a_wrong_password_is_one_line_without_the_password(secured: Secured) -> None:
    url = re.sub(r":[0-9a-f]{32}@", ":not-the-password@", secured.urls["worker"])
    result = fleettrace(
        "metrics",
        "--redis-url",
        url,
        "--namespace",
        secured.keys.namespace,
        env=worker_env(url, "postgresql://postgres@127.0.0.1:5432/postgres", secured.keys),
    )
    assert result.returncode != 0
    assert "not-the-password" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_user_name_that_cannot_name_keys_is_a_counted_failure_until_overridden(
    secured: Secured,
) -> None:
    password = uuid.uuid4().hex
    odd = "ops@agent"  # a valid ACL user name, not a valid producer identity
    url = create_user(secured.admin, AGENT, secured.keys, "ops", password).replace(
        "redis://ops:", "redis://ops%40agent:"
    )
    secured.admin.execute_command(
        "ACL", "SETUSER", odd, *rules(AGENT, secured.keys, "ops", password)
    )
    em = Emitter(EmitterSettings(redis_url=url, namespace=NS, retry_initial_s=0.01))
    em.record(_trace(0))
    wait_until(lambda: em.stats.send_failures >= 2, message="the emitter to retry")
    assert "producer identity 'ops@agent'" in (em.stats.last_error or "")
    assert em.stats.buffered == 1
    em.close(0.1)
    # Overridden with a valid identity that its key pattern grants, it records.
    with Emitter(EmitterSettings(redis_url=url, namespace=NS, producer="ops")) as em:
        em.record(_trace(0))
        assert em.flush(10)
        assert em.stats.send_failures == 0
    assert secured.admin.xlen(secured.keys.for_producer("ops").traces) == 1
