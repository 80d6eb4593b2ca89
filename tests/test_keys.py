"""The key layout, and the exact set of keys one record touches in a real Redis."""

from __future__ import annotations

import math

import pytest
import redis

import fleettrace
from fleettrace import LLMTrace, MetricKey
from fleettrace.emitter import EmitterSettings
from fleettrace.keys import (
    MAX_ENTRY_BYTES,
    Keys,
    bucket_stat,
    configured_namespace,
    decode_labels,
    encode_labels,
    live_field,
    split_live_field,
)
from tests.emitting import make_emitter


def test_every_key_shares_the_namespace_hash_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETTRACE_NAMESPACE", raising=False)
    keys = Keys("prod")
    assert keys.traces == "{prod}:traces"
    assert keys.metrics == "{prod}:metrics"
    assert keys.streams == ("{prod}:traces", "{prod}:metrics")
    assert keys.live("plan.cost_usd") == "{prod}:live:plan.cost_usd"
    assert keys.emitter_seq("ab") == "{prod}:emitters:ab"
    assert keys.emitter_seq_pattern == "{prod}:emitters:*"
    assert keys.emitter == "{prod}:emitter"
    assert keys.dead_letters("persist") == "{prod}:dlq:persist"
    assert Keys().prefix == "{fleettrace}"
    assert MAX_ENTRY_BYTES == 4 * 1024 * 1024


def test_keys_without_a_namespace_take_the_configured_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETTRACE_NAMESPACE", "fleet-b")
    assert Keys() == Keys("fleet-b")
    assert configured_namespace() == "fleet-b"
    assert EmitterSettings().namespace == "fleet-b"
    assert Keys("other").namespace == "other"
    monkeypatch.setenv("FLEETTRACE_NAMESPACE", "  ")
    assert Keys().namespace == "fleettrace"
    monkeypatch.setenv("FLEETTRACE_NAMESPACE", "a b")
    with pytest.raises(ValueError, match="namespace 'a b'"):
        Keys()


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
    assert touched == {
        keys.emitter_seq(emitter.emitter_id),
        keys.traces,
        keys.emitter,
        keys.live("actor.token_usage"),
        keys.live("llm.retries_count"),
        keys.live("llm.errors_count"),
        keys.plan("p1"),
    }
    assert 0 < redis_client.ttl(keys.emitter_seq(emitter.emitter_id)) <= 24 * 3600
    assert 0 < redis_client.ttl(keys.plan("p1")) <= 7 * 24 * 3600


def test_one_sample_touches_exactly_these_keys(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys)
    emitter.observe(MetricKey.INDEX_QUERY_DURATION_MS, 4.0, {"backend": "vector"})
    assert emitter.close()
    touched = {k.decode() for k in redis_client.scan_iter(match=f"{keys.prefix}*")}
    assert touched == {
        keys.emitter_seq(emitter.emitter_id),
        keys.metrics,
        keys.emitter,
        keys.live("index.query_duration_ms"),
    }


def test_budget_checks_read_the_configured_namespace_without_being_given_keys(
    redis_url: str, keys: Keys, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's budget check, in an agent whose namespace comes from
    FLEETTRACE_NAMESPACE: it reads the namespace the emitter writes."""
    monkeypatch.setenv("FLEETTRACE_NAMESPACE", keys.namespace)
    monkeypatch.setenv("FLEETTRACE_REDIS_URL", redis_url)
    emitter = fleettrace.Emitter(EmitterSettings.from_env(flush_interval_s=0.01))
    emitter.record(LLMTrace(provider="openai", model="gpt-4o", plan_id="plan-42", cost_usd=6.0))
    assert emitter.close()
    # As the README writes it, and without any Keys at all.
    assert fleettrace.is_over_budget(redis_client, fleettrace.Keys(), "plan-42", budget_usd=5.0)
    assert fleettrace.is_over_budget(redis_client, "plan-42", budget_usd=5.0)
    assert fleettrace.is_over_budget(redis_client, "plan-42", 5.0)
    assert not fleettrace.is_over_budget(redis_client, "plan-42", budget_usd=7.0)
    assert fleettrace.plan_cost_usd(redis_client, "plan-42") == 6.0
    assert fleettrace.plan_cost_usd(redis_client, fleettrace.Keys(), "plan-42") == 6.0
    [series] = fleettrace.read_live(redis_client, metric_key="actor.token_usage")[:1]
    assert series.count == 1  # the configured namespace's fleet-wide series
    # An explicit namespace still wins over the configured one.
    other = Keys(f"{keys.namespace}-x")
    assert fleettrace.plan_cost_usd(redis_client, "plan-42", keys=other) == 0.0
    assert fleettrace.plan_cost_usd(redis_client, other, "plan-42") == 0.0
    assert not fleettrace.is_over_budget(redis_client, "plan-42", budget_usd=5.0, keys=other)
    assert fleettrace.read_live(redis_client, other) == []
    with pytest.raises(TypeError, match="plan_id"):
        fleettrace.plan_cost_usd(redis_client)  # type: ignore[call-overload]
