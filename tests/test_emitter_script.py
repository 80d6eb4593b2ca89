"""The batch script when a command of it would fail: nothing is written, the emitter
counts a failure with its reason, and the batch arrives once the cause is fixed."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from fleettrace.emitter import Emitter
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from tests.emitting import emitter_figures, live_hash, make_emitter, stream_records
from tests.servers import PrivateRedis

SECURITY_DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"

DEADLINE_S = 30.0
FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.05, "socket_timeout_s": 2.0}


def trace(i: int) -> LLMTrace:
    return LLMTrace(
        trace_id=uuid.UUID(int=i + 1),
        plan_id="plan-a",
        provider="openai",
        model="gpt-4o",
        prompt_tokens=i,
        completion_tokens=1,
        cost_usd=0.5,
    )


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


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
    wait_until(lambda: emitter.stats.send_failures >= 2, "the batch to be refused twice")
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


def agent_rules(keys: Keys, password: str, *, without: str) -> list[str]:
    """The documented agent line of docs/security.md for ``keys``, minus one right."""
    line = re.search(
        r"^ACL SETUSER fleettrace-agent (.+)$", SECURITY_DOC.read_text(), flags=re.MULTILINE
    )
    assert line is not None
    rules = line.group(1).replace("{fleettrace}", keys.prefix).split()
    assert without in rules
    return [f">{password}" if r.startswith(">") else r for r in rules if r != without]


def test_a_user_missing_one_command_of_the_script_writes_nothing_then_arrives_once(
    private_redis: PrivateRedis,
) -> None:
    keys = Keys("acl")
    admin = redis.Redis.from_url(private_redis.url)
    password = uuid.uuid4().hex
    rules = agent_rules(keys, password, without="+hincrbyfloat")
    admin.execute_command("ACL", "SETUSER", "agent", *rules)
    url = f"redis://agent:{password}@127.0.0.1:{private_redis.port}/0"
    emitter = make_emitter(url, keys, **FAST)
    for i in range(10):
        emitter.record(trace(i))
    wait_until(lambda: emitter.stats.send_failures >= 2, "the batch to be refused twice")
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
    cost = live_hash(admin, keys, "plan.cost_usd")
    assert cost[("plan=plan-a", "count")] == "10"
    assert float(cost[("plan=plan-a", "sum")]) == 5.0
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
    wait_until(lambda: emitter.stats.send_failures >= 2, "the batch to be refused twice")
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
