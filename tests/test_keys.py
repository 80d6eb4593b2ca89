"""The key layout, and the exact set of keys one record touches in a real Redis."""

from __future__ import annotations

import math

import pytest
import redis

import fleettrace
from fleettrace import LLMTrace, MetricKey
from fleettrace.emitter import EmitterSettings
from fleettrace.errors import ConfigurationError
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
    assert keys.producer == "default"
    assert keys.traces == "{prod}:p:default:traces"
    assert keys.metrics == "{prod}:p:default:metrics"
    assert keys.streams == ("{prod}:p:default:traces", "{prod}:p:default:metrics")
    assert keys.live("plan.cost_usd") == "{prod}:p:default:live:plan.cost_usd"
    assert keys.emitter_seq("ab") == "{prod}:p:default:emitters:ab"
    assert keys.emitter_seq_pattern == "{prod}:p:default:emitters:*"
    assert keys.emitter == "{prod}:p:default:emitter"
    alice = keys.for_producer("alice")
    assert alice.plan("p|1") == "{prod}:p:alice:plan:p%7C1"
    assert alice.producer_prefix == "{prod}:p:alice"
    assert keys.stream_patterns == ("{prod}:p:*:traces", "{prod}:p:*:metrics")
    assert keys.legacy_streams == ("{prod}:traces", "{prod}:metrics")
    assert keys.producers == "{prod}:producers"
    assert keys.plan_pattern == "{prod}:p:*:plan:*"
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
        keys.live("llm.latency_ms"),
        keys.live("llm.cost_usd"),
        keys.plan("p1"),
        keys.dirty,  # what changed, for the worker's aggregates
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
        keys.dirty,
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


def test_a_producer_is_named_by_its_stream_key_only() -> None:
    keys = Keys("prod")
    assert keys.producer_of("{prod}:p:alice:traces") == "alice"
    assert keys.producer_of("{prod}:p:bob.2:metrics") == "bob.2"
    for stream in (
        "{prod}:traces",
        "{prod}:p:alice:live:x",
        "{prod}:p::traces",
        "{other}:p:alice:traces",
        "{prod}:p:a*b:traces",
    ):
        assert keys.producer_of(stream) is None
    assert keys.is_stream("{prod}:traces") and keys.is_stream("{prod}:p:a:metrics")
    assert keys.plan_of("{prod}:p:alice:plan:x:plan:y") == "x:plan:y"
    assert keys.plan_of("{prod}:p:alice:live:plan.cost_usd") is None


@pytest.mark.parametrize("producer", ["", "a b", "x" * 65, "a:b", "a*", "{a}", "é"])
def test_a_producer_identity_outside_the_safe_characters_is_refused(producer: str) -> None:
    with pytest.raises(ValueError, match="producer identity"):
        Keys("prod", producer)
    with pytest.raises(ConfigurationError, match="producer identity"):
        EmitterSettings(producer=producer)


def test_the_producer_comes_from_the_environment_when_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETTRACE_PRODUCER", "agent-7")
    assert EmitterSettings.from_env().producer == "agent-7"
    monkeypatch.setenv("FLEETTRACE_PRODUCER", " ")
    assert EmitterSettings.from_env().producer is None
