"""The key layout, and the exact set of keys one record touches in a real Redis."""

from __future__ import annotations

import math

import pytest
import redis

from fleettrace import LLMTrace, MetricKey
from fleettrace.keys import (
    Keys,
    bucket_stat,
    decode_labels,
    encode_labels,
    live_field,
    split_live_field,
)
from tests.emitting import make_emitter


def test_every_key_shares_the_namespace_hash_tag() -> None:
    keys = Keys("prod")
    assert keys.traces == "{prod}:traces"
    assert keys.metrics == "{prod}:metrics"
    assert keys.streams == ("{prod}:traces", "{prod}:metrics")
    assert keys.live("plan.cost_usd") == "{prod}:live:plan.cost_usd"
    assert keys.applied("ab") == "{prod}:applied:ab"
    assert keys.emitter == "{prod}:emitter"
    assert keys.dead_letters("persist") == "{prod}:dlq:persist"
    assert Keys().prefix == "{fleettrace}"


@pytest.mark.parametrize("namespace", ["", "a b", "x" * 65, "{tag}", "a:b"])
def test_bad_namespace_is_refused(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        Keys(namespace)


@pytest.mark.parametrize(
    "labels",
    [(), (("tool", "plain"),), (("plan", "a,b=c|d%e"), ("phase", "%2C")), (("x", ""),)],
)
def test_labels_survive_the_hash_field(labels: tuple[tuple[str, str], ...]) -> None:
    field = live_field(encode_labels(labels), "count")
    encoded, stat = split_live_field(field)
    assert stat == "count"
    assert decode_labels(encoded) == labels


def test_bucket_stats() -> None:
    assert bucket_stat(5) == "le=5.0"
    assert bucket_stat(0.01) == "le=0.01"
    assert bucket_stat(math.inf) == "le=+Inf"


def test_one_trace_touches_exactly_these_keys(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys)
    emitter.record(
        LLMTrace(
            provider="openai",
            model="gpt-4o",
            prompt_tokens=10,
            plan_id="p1",
            retry_count=1,
            error="Timeout: slow",
        )
    )
    assert emitter.close()
    touched = {k.decode() for k in redis_client.scan_iter(match=f"{keys.prefix}*")}
    applied = {k for k in touched if k.startswith(keys.applied(""))}
    assert len(applied) == 1
    assert touched - applied == {
        keys.traces,
        keys.emitter,
        keys.live("actor.token_usage"),
        keys.live("llm.retries_count"),
        keys.live("llm.errors_count"),
        keys.plan("p1"),
    }
    assert 0 < redis_client.ttl(applied.pop()) <= 24 * 3600
    assert 0 < redis_client.ttl(keys.plan("p1")) <= 7 * 24 * 3600


def test_one_sample_touches_exactly_these_keys(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys)
    emitter.observe(MetricKey.INDEX_QUERY_DURATION_MS, 4.0, {"backend": "vector"})
    assert emitter.close()
    touched = {k.decode() for k in redis_client.scan_iter(match=f"{keys.prefix}*")}
    assert {k for k in touched if ":applied:" not in k} == {
        keys.metrics,
        keys.emitter,
        keys.live("index.query_duration_ms"),
    }
