"""The batch script when a command of it would fail: nothing is written, the emitter
counts a failure with its reason, and the batch arrives once the cause is fixed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import redis

from fleettrace.emitter import Emitter
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from tests.emitting import emitter_figures, make_emitter, stream_records

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
