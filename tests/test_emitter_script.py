"""The batch script when a command of it would fail: nothing is written, the emitter
counts a failure with its reason, and the batch arrives once the cause is fixed."""

from __future__ import annotations

import uuid

import pytest
import redis

from fleettrace.batch_script import APPLY_BATCH_LUA
from fleettrace.emitter import Emitter
from fleettrace.keys import EMITTER_SEQ_TTL_S, Keys, plan_field
from fleettrace.model import LLMTrace
from tests.acl import AGENT, create_user
from tests.emitting import emitter_figures, make_emitter, stream_records
from tests.factories import llm_trace
from tests.servers import PrivateRedis
from tests.waiting import wait_until

DEADLINE_S = 30.0
FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.05, "socket_timeout_s": 2.0}


def trace(i: int) -> LLMTrace:
    return llm_trace(
        trace_id=uuid.UUID(int=i + 1),
        plan_id="plan-a",
        provider="openai",
        model="gpt-4o",
        prompt_tokens=i,
        completion_tokens=1,
        cost_usd=0.5,
    )


def assert_accounted(emitter: Emitter) -> None:
    stats = emitter.stats
    assert stats.accepted == stats.sent + stats.dropped + stats.buffered, stats


def test_a_stream_key_of_the_wrong_type_is_a_counted_failure_then_arrives_once(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    redis_client.set(keys.traces, "not a stream")
    emitter = make_emitter(redis_url, keys, **FAST)
    for i in range(40):
        emitter.record(trace(i))
    wait_until(lambda: emitter.stats.send_failures >= 2, message="the batch to be refused twice")
    stats = emitter.stats
    assert (stats.sent, stats.dropped, stats.buffered, stats.accepted) == (0, 0, 40, 40)
    assert "WRONGTYPE" in (stats.last_error or "")
    assert keys.traces in (stats.last_error or "")
    # Nothing of the batch was written: no counters, no figures, no idempotency state.
    assert sorted(k.decode() for k in redis_client.scan_iter(f"{keys.prefix}*")) == [keys.traces]

    redis_client.delete(keys.traces)
    assert emitter.flush(DEADLINE_S)
    assert_accounted(emitter)
    assert [r.trace_id for r in stream_records(redis_client, keys.traces)] == [
        uuid.UUID(int=i + 1) for i in range(40)
    ]
    assert emitter_figures(redis_client, keys) == {"records": 40, "batches": 1}
    assert emitter.stats.sent == 40
    assert emitter.close()


def test_a_user_missing_one_command_of_the_script_writes_nothing_then_arrives_once(
    private_redis: PrivateRedis,
) -> None:
    keys = Keys("acl", "agent")  # the agent user's own keys
    admin = redis.Redis.from_url(private_redis.url)
    password = uuid.uuid4().hex
    url = create_user(admin, AGENT, keys, "agent", password, without="+hincrbyfloat")
    emitter = make_emitter(url, keys, **FAST)
    for i in range(10):
        emitter.record(trace(i))
    wait_until(lambda: emitter.stats.send_failures >= 2, message="the batch to be refused twice")
    stats = emitter.stats
    assert (stats.sent, stats.dropped, stats.buffered, stats.accepted) == (0, 0, 10, 10)
    assert "NoPermissionError" in (stats.last_error or "")
    assert "HINCRBYFLOAT" in (stats.last_error or "")
    assert password not in (stats.last_error or "")
    assert admin.keys("*") == []  # nothing written, no idempotency state either

    admin.execute_command("ACL", "SETUSER", "agent", "+hincrbyfloat")
    assert emitter.flush(DEADLINE_S)
    assert_accounted(emitter)
    assert emitter.stats.sent == 10
    assert [r.trace_id for r in stream_records(admin, keys.traces)] == [
        uuid.UUID(int=i + 1) for i in range(10)
    ]
    cost = admin.hgetall(keys.plan("plan-a"))
    assert cost[plan_field("plan.cost_usd", "", "count").encode()] == b"10"
    assert float(cost[plan_field("plan.cost_usd", "", "sum").encode()]) == 5.0
    assert emitter_figures(admin, keys) == {"records": 10, "batches": 1}
    assert emitter.close()
    admin.close()


def test_redis_out_of_memory_refuses_the_first_write_then_the_batch_arrives_once(
    private_redis: PrivateRedis,
) -> None:
    """Kept as a guard: with ``noeviction`` Redis refuses a script's first write, so
    nothing is half-applied; the emitter counts the refusal and retries."""
    keys = Keys("oom")
    admin = redis.Redis.from_url(private_redis.url)
    admin.set("filler", b"x" * 2_000_000)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1mb")
    emitter = make_emitter(private_redis.url, keys, **FAST)
    for i in range(20):
        emitter.record(trace(i))
    wait_until(lambda: emitter.stats.send_failures >= 2, message="the batch to be refused twice")
    stats = emitter.stats
    assert (stats.sent, stats.dropped, stats.buffered, stats.accepted) == (0, 0, 20, 20)
    assert "OutOfMemoryError: command not allowed when used memory > 'maxmemory'" in (
        stats.last_error or ""
    )
    assert admin.keys(f"{keys.prefix}*") == []

    admin.config_set("maxmemory", "0")
    assert emitter.flush(DEADLINE_S)
    assert_accounted(emitter)
    assert emitter.stats.sent == 20
    assert len(stream_records(admin, keys.traces)) == 20
    assert emitter_figures(admin, keys) == {"records": 20, "batches": 1}
    assert emitter.close()
    admin.close()


def test_the_script_applies_only_numbers_above_the_last_applied_one(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    """A batch given up (number 2 here, never sent) does not block later ones; a late
    copy of an older batch is skipped."""
    emitter = make_emitter(redis_url, keys)
    [first], [given_up], [third] = (emitter._encode([trace(i)]) for i in range(3))
    assert (first.seq, given_up.seq, third.seq) == (1, 2, 3)
    script = redis_client.register_script(APPLY_BATCH_LUA)
    assert script(keys=first.keys, args=first.args) == 1
    assert script(keys=third.keys, args=third.args) == 1
    assert script(keys=given_up.keys, args=given_up.args) == 0
    assert script(keys=first.keys, args=first.args) == 0
    assert [r.trace_id for r in stream_records(redis_client, keys.traces)] == [
        uuid.UUID(int=1),
        uuid.UUID(int=3),
    ]
    seq_key = keys.emitter_seq(emitter.emitter_id)
    assert redis_client.get(seq_key) == b"3"
    assert 0 < redis_client.ttl(seq_key) <= EMITTER_SEQ_TTL_S
    # Another emitter numbers its batches on its own.
    other = make_emitter(redis_url, keys)
    [its_first] = other._encode([trace(9)])
    assert script(keys=its_first.keys, args=its_first.args) == 1
    emitter.close()
    other.close()


@pytest.mark.slow
def test_idempotency_state_is_one_small_key_per_emitter_whatever_the_batch_count(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitters = [make_emitter(redis_url, keys, max_batch_records=1) for _ in range(2)]
    for i in range(3000):
        emitter = emitters[i % 2]
        emitter.record(trace(i))
        if i % 50 == 49:
            assert emitter.flush(DEADLINE_S)  # keep the batches small: one record each
    for emitter in emitters:
        assert emitter.flush(DEADLINE_S)
    batches = [e.stats.batches for e in emitters]
    assert sum(batches) >= 3000 * 0.9  # many batches, nearly one per record
    state = sorted(k.decode() for k in redis_client.scan_iter(keys.emitter_seq_pattern))
    assert state == sorted(keys.emitter_seq(e.emitter_id) for e in emitters)
    for emitter, count in zip(emitters, batches, strict=True):
        seq_key = keys.emitter_seq(emitter.emitter_id)
        assert redis_client.get(seq_key) == str(count).encode()
        # docs/reliability.md: about 100 bytes (104 measured with this 17-character
        # namespace); a thousand batches of the per-batch markers held about 100 kB.
        assert redis_client.memory_usage(seq_key) <= 128
    assert len(stream_records(redis_client, keys.traces)) == 3000
    for emitter in emitters:
        assert emitter.close()


def test_an_unknown_op_or_a_sequence_key_without_a_number_is_refused_before_any_write(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    """A new op kind must be declared in the script's OPS table; until it is, a call
    using it writes nothing. A sequence key holding something else is refused too."""
    emitter = make_emitter(redis_url, keys)
    [call] = emitter._encode([trace(0)])
    script = redis_client.register_script(APPLY_BATCH_LUA)
    with pytest.raises(redis.ResponseError, match="unknown op x"):
        script(keys=call.keys, args=[*call.args, "x", 5, "field", 1])
    assert list(redis_client.scan_iter(f"{keys.prefix}*")) == []
    redis_client.set(keys.emitter_seq(emitter.emitter_id), "not a number")
    with pytest.raises(redis.ResponseError, match="holds no batch number"):
        script(keys=call.keys, args=call.args)
    assert [k.decode() for k in redis_client.scan_iter(f"{keys.prefix}*")] == [
        keys.emitter_seq(emitter.emitter_id)
    ]
    emitter.close()
