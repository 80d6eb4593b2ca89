"""Live reads: series from the hashes, percentiles from sketches, fleet-wide plan budgets."""

from __future__ import annotations

import math
import multiprocessing

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import fleettrace
from fleettrace import ConfigurationError, LLMTrace, MetricKey
from fleettrace.errors import RedisUnavailable
from fleettrace.keys import Keys
from fleettrace.live import is_over_budget, plan_cost_usd, read_live
from fleettrace.plans import count_plans, migrate_legacy_plan_fields, read_plan, top_plans
from tests.emitting import make_emitter
from tests.servers import PrivateRedis, free_port

INF = math.inf


def test_read_live_returns_every_series(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys)
    for value in (3.0, 7.0, 7.5, 40.0, 1e6):
        emitter.observe(MetricKey.INDEX_QUERY_DURATION_MS, value, {"backend": "text"})
    emitter.observe(MetricKey.INDEX_QUERY_DURATION_MS, 1.0, {"backend": "graph"})
    emitter.observe(MetricKey.CONTEXT_TOKENS_USED, 500)
    emitter.observe(MetricKey.CONTEXT_TOKENS_USED, 450)
    emitter.record(
        LLMTrace(provider="openai", model="gpt-4o", prompt_tokens=7, plan_id="p", latency_ms=1234.5)
    )
    assert emitter.close()

    series = read_live(redis_client, keys)
    # Per-plan series are not fleet-wide: they live in the plan's hash (tests below).
    assert [(s.key.value, s.labels) for s in series] == [
        (
            "actor.token_usage",
            (("provider", "openai"), ("model", "gpt-4o"), ("token_type", "completion")),
        ),
        (
            "actor.token_usage",
            (("provider", "openai"), ("model", "gpt-4o"), ("token_type", "prompt")),
        ),
        ("context.tokens_used", ()),
        ("index.query_duration_ms", (("backend", "graph"),)),
        ("index.query_duration_ms", (("backend", "text"),)),
        ("llm.latency_ms", (("provider", "openai"), ("model", "gpt-4o"))),
        ("llm.cost_usd", (("provider", "openai"), ("model", "gpt-4o"))),
    ]
    # Every call's latency, the priced call's cost (priced by the emitter's sender).
    latency, cost = series[5:]
    assert (latency.count, latency.sum) == (1, 1234.5)
    assert latency.p50 == latency.p99 == pytest.approx(1234.5, rel=0.02)
    assert dict(latency.buckets)[1280.0] == 1
    assert cost.count == 1
    assert cost.sum == pytest.approx(plan_cost_usd(redis_client, keys, "p")) and cost.sum > 0
    gauge = series[2]
    assert (gauge.count, gauge.value, gauge.buckets, gauge.p50) == (2, 450.0, (), None)
    prompt = series[1]
    assert (prompt.count, prompt.sum, prompt.value, prompt.p99) == (1, 7.0, None, None)
    text = series[4]
    assert text.count == 5
    assert text.sum == pytest.approx(1e6 + 57.5)
    counts = dict(text.buckets)
    assert [bound for bound, _ in text.buckets] == [
        *MetricKey.INDEX_QUERY_DURATION_MS.spec.buckets,
        INF,
    ]
    assert (counts[5.0], counts[10.0], counts[50.0], counts[INF]) == (1, 2, 1, 1)
    assert sum(counts.values()) == 5
    # Nearest rank of 3, 7, 7.5, 40, 1e6: p50 is the 3rd value, p95 and p99 the 5th.
    assert text.p50 == pytest.approx(7.5, rel=0.02)
    assert text.p95 == pytest.approx(1e6, rel=0.02)
    assert text.p99 == pytest.approx(1e6, rel=0.02)
    assert text.sum == 1e6 + 57.5

    only = read_live(redis_client, keys, "context.tokens_used")
    assert only == [gauge]
    with pytest.raises(ValueError, match=r"no\.such_key"):
        read_live(redis_client, keys, "no.such_key")
    with pytest.raises(ValueError, match=r"plan\.cost_usd is counted per plan"):
        read_live(redis_client, keys, MetricKey.PLAN_COST_USD)
    assert read_live(redis_client, Keys("never-written-" + keys.namespace)) == []


def spend(redis_url: str, namespace: str, plan_id: str, calls: int) -> None:
    emitter = fleettrace.configure(redis_url, namespace)
    for _ in range(calls):
        emitter.record(LLMTrace(provider="openai", model="gpt-4o", plan_id=plan_id, cost_usd=0.1))
        emitter.record(LLMTrace(provider="acme", model="unpriced-model", plan_id=plan_id))
    emitter.close()


@pytest.mark.slow
def test_budget_check_sees_the_cost_of_every_process(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    context = multiprocessing.get_context("spawn")
    spenders = [
        context.Process(target=spend, args=(redis_url, keys.namespace, "shared", calls))
        for calls in (3, 4)
    ]
    for process in spenders:
        process.start()
    for process in spenders:
        process.join(120)
        assert process.exitcode == 0
    assert plan_cost_usd(redis_client, keys, "shared") == pytest.approx(0.7)
    assert is_over_budget(redis_client, keys, "shared", 0.5)
    assert not is_over_budget(redis_client, keys, "shared", 1.0)
    assert plan_cost_usd(redis_client, keys, "other") == 0.0
    assert not is_over_budget(redis_client, keys, "other", 0.0)


def test_unreachable_redis_is_one_clear_error(keys: Keys) -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(RedisUnavailable, match="reading the live counters: Error 111"):
        read_live(client, keys)
    with pytest.raises(RedisUnavailable, match="reading a plan's cost"):
        plan_cost_usd(client, keys, "p")
    with pytest.raises(RedisUnavailable, match="reading a plan's counters"):
        read_plan(client, keys, "p")
    with pytest.raises(RedisUnavailable, match="reading the live plans"):
        top_plans(client, keys, 5)
    with pytest.raises(RedisUnavailable, match="counting the live plans"):
        count_plans(client, keys)
    with pytest.raises(RedisUnavailable, match="moving the per-plan counters"):
        migrate_legacy_plan_fields(client, keys)


def test_acl_users_connect_by_url_and_wrong_password_is_a_configuration_error() -> None:
    server = PrivateRedis(appendonly=False)
    server.start()
    try:
        admin = redis.Redis(port=server.port)
        admin.execute_command("ACL", "SETUSER", "agent", "on", ">s3cret", "~{acl}:*", "+@all")
        url = f"redis://agent:s3cret@127.0.0.1:{server.port}/0"
        emitter = fleettrace.Emitter(fleettrace.EmitterSettings(redis_url=url, namespace="acl"))
        emitter.record(LLMTrace(provider="openai", model="gpt-4o", plan_id="p", cost_usd=0.5))
        assert emitter.close(10)
        assert plan_cost_usd(admin, Keys("acl", "agent"), "p") == 0.5
        wrong = redis.Redis.from_url(f"redis://agent:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(ConfigurationError, match="Redis refused reading the live counters"):
            read_live(wrong, Keys("acl"))
        admin.close()
    finally:
        server.close()
