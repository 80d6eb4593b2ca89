"""The emitter cuts a batch by encoded size as well as by count, so no stream entry
it writes is over MAX_ENTRY_BYTES, and each call's counters match its own records."""

from __future__ import annotations

import uuid

import pytest
import redis

from fleettrace.batch_script import APPLY_BATCH_LUA
from fleettrace.batching import encode_calls, entry_bytes
from fleettrace.codec import decode_entry
from fleettrace.keys import MAX_ENTRY_BYTES, Keys
from fleettrace.model import (
    MAX_ERROR_CHARS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_TOOL_CALLS,
    LLMTrace,
    MetricSample,
)
from tests.emitting import emitter_figures, live_hash, make_emitter, stream_records
from tests.servers import PrivateRedis

DEADLINE_S = 60.0


def largest_trace(i: int) -> LLMTrace:
    """A trace with every field at its limit (about 36 kB of JSON)."""
    return LLMTrace(
        trace_id=uuid.UUID(int=i + 1),
        plan_id=f"{i:08d}".ljust(MAX_ID_CHARS, "p"),
        decision_id="d" * MAX_ID_CHARS,
        actor="a" * MAX_NAME_CHARS,
        provider="openai",
        model="gpt-4o",
        prompt_tokens=1_000_000_000,
        completion_tokens=1_000_000_000,
        cost_usd=1_000_000.0,
        latency_ms=86_400_000.0,
        tool_calls=[f"{t:04d}".ljust(MAX_NAME_CHARS, "t") for t in range(MAX_TOOL_CALLS)],
        context_hash="0" * 64,
        retry_count=10_000,
        error="E" * MAX_ERROR_CHARS,
    )


def entries(client: redis.Redis, stream: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(stream)]


def test_a_batch_over_the_entry_limit_becomes_calls_each_under_it(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    traces = [largest_trace(i) for i in range(10)]
    samples = [
        MetricSample(key="tool.invocation_duration_ms", value=float(i), labels={"tool": "t" * 100})
        for i in range(60)
    ]
    limit = 100_000  # three traces of about 36 kB make an entry over it
    seqs = iter(range(1, 100))
    encoded = encode_calls(
        keys, "e1", lambda: next(seqs), [*traces, *samples], 7, max_entry_bytes=limit
    )
    assert encoded.unencodable == 0
    assert len(encoded.calls) == 5  # two traces per call; the samples fit in the first
    assert [c.seq for c in encoded.calls] == [1, 2, 3, 4, 5]
    assert [c.records for c in encoded.calls] == [62, 2, 2, 2, 2]
    assert [c.dropped for c in encoded.calls] == [7, 0, 0, 0, 0]
    script = redis_client.register_script(APPLY_BATCH_LUA)
    for call in encoded.calls:
        assert script(keys=call.keys, args=call.args) == 1
    written = entries(redis_client, keys.traces) + entries(redis_client, keys.metrics)
    assert all(entry_bytes(e) <= limit for e in written)
    assert [r.trace_id for r in stream_records(redis_client, keys.traces)] == [
        t.trace_id for t in traces
    ]
    assert len(stream_records(redis_client, keys.metrics)) == 60
    # Each call carried the counters of its own records: the totals are exact.
    tokens = live_hash(redis_client, keys, "actor.token_usage")
    assert tokens[("provider=openai,model=gpt-4o,token_type=prompt", "count")] == "10"
    durations = live_hash(redis_client, keys, "tool.invocation_duration_ms")
    assert durations[("tool=" + "t" * 100, "count")] == "60"
    assert emitter_figures(redis_client, keys) == {"records": 70, "batches": 5, "dropped": 7}


def test_a_batch_under_the_limit_stays_one_call(keys: Keys) -> None:
    encoded = encode_calls(keys, "e1", lambda: 1, [largest_trace(0)], 0)
    assert len(encoded.calls) == 1


@pytest.mark.slow
def test_a_thousand_records_at_the_field_maxima_never_make_an_entry_over_the_limit(
    private_redis: PrivateRedis,
) -> None:
    keys = Keys("maxima")
    records = [largest_trace(i) for i in range(1000)]
    emitter = make_emitter(private_redis.url, keys, max_batch_records=1000)
    for record in records:
        emitter.record(record)
    assert emitter.flush(DEADLINE_S)
    client = redis.Redis.from_url(private_redis.url)
    written = entries(client, keys.traces)
    sizes = [entry_bytes(e) for e in written]
    assert sum(sizes) > 30_000_000  # the whole batch is about 36 MB
    assert max(sizes) <= MAX_ENTRY_BYTES
    got = [r for e in written for r in decode_entry(e).records]
    assert [r.trace_id for r in got] == [r.trace_id for r in records]
    tokens = live_hash(client, keys, "actor.token_usage")
    assert tokens[("provider=openai,model=gpt-4o,token_type=prompt", "count")] == "1000"
    stats = emitter.stats
    assert (stats.accepted, stats.sent, stats.dropped, stats.buffered) == (1000, 1000, 0, 0)
    assert emitter.close()
    client.close()
