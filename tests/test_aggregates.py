"""The worker's aggregates: equal to the clamped sums over producers that readers make
without a worker, after redelivery and reruns, against hostile producers, for a plan
several producers counted, and through expiry (worker/fleettrace_worker/aggregator.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fleettrace.aggregates import snapshot_fields
from fleettrace.emitter import Emitter
from fleettrace.keys import (
    DIRTY_LIVE,
    DIRTY_PLAN,
    SNAPSHOT_REFRESH_MS,
    SNAPSHOT_TTL_MS,
    SNAPSHOT_VERSION,
    Keys,
    plan_field,
)
from fleettrace.live import LiveSeries, is_over_budget, plan_cost_usd, read_live
from fleettrace.model import LLMTrace
from fleettrace.plans import count_plans, read_plan, top_plans
from fleettrace_worker.process import Worker, WorkerSettings
from fleettrace_worker.serve.aggregator import Aggregation
from tests.emitting import make_emitter
from tests.factories import llm_trace
from tests.waiting import wait_until
from tests.worker_helpers import migrated

PRODUCERS = ("alice", "bob", "carol")


def _trace(i: int, plan: str, cost: float) -> LLMTrace:
    return llm_trace(
        plan_id=plan,
        actor=f"actor-{i % 2}",
        provider="openai",
        model="gpt-4o",
        prompt_tokens=i + 1,
        completion_tokens=2 * i + 1,
        cost_usd=cost,
    )


def _emitter(redis_url: str, keys: Keys, producer: str, **settings: Any) -> Emitter:
    return make_emitter(redis_url, keys, producer=producer, **settings)


def _record(redis_url: str, keys: Keys, producer: str, traces: list[LLMTrace], **kw: Any) -> None:
    with _emitter(redis_url, keys, producer, **kw) as em:
        for trace in traces:
            em.record(trace)
        assert em.flush(10)


def _fleet(redis_url: str, client: redis.Redis, keys: Keys) -> None:
    """Three producers; plan "shared" counted by all three, one plan of each alone."""
    for n, producer in enumerate(PRODUCERS):
        traces = [_trace(i, "shared", 0.5 * (n + 1)) for i in range(3)]
        traces += [_trace(i, f"own-{producer}", 0.25) for i in range(2)]
        _record(redis_url, keys, producer, traces)
    client.sadd(keys.producers, *PRODUCERS)  # as the worker's discovery does


def _figures(client: redis.Redis, keys: Keys) -> dict[str, object]:
    """What every reader reports, series without anything counted left out (a
    contribution clamped to zero leaves a zero field in one form and none in the
    other)."""

    def shown(series: list[LiveSeries]) -> list[tuple[object, ...]]:
        return [
            (s.key, s.labels, s.count, pytest.approx(s.sum), s.value, s.buckets)
            for s in series
            if s.count or s.sum or s.value
        ]

    plan = read_plan(client, keys, "shared")
    top = top_plans(client, keys, 10)
    return {
        "live": shown(read_live(client, keys)),
        "cost": pytest.approx(plan_cost_usd(client, keys, "shared")),
        "plan": None if plan is None else shown(list(plan.series)),
        "top": [(p.plan_id, pytest.approx(p.cost_usd), p.priced_calls) for p in top.plans],
        "count": count_plans(client, keys),
    }


def _both(client: redis.Redis, keys: Keys) -> tuple[dict[str, object], dict[str, object]]:
    """(what readers report from the aggregates, what they report summing the
    producers themselves, as without a worker)."""
    assert client.exists(keys.aggregate_fresh)
    from_aggregates = _figures(client, keys)
    client.delete(keys.aggregate_fresh)
    summed = _figures(client, keys)
    return from_aggregates, summed


def test_a_batch_names_what_it_changed_in_its_producers_dirty_set(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    _record(redis_url, keys, "alice", [_trace(0, "p,1=x", 0.1)])
    members = {m.decode() for m in redis_client.smembers(keys.for_producer("alice").dirty)}
    assert DIRTY_PLAN + "p%2C1%3Dx" in members
    assert DIRTY_LIVE + "actor.token_usage" in members
    assert all(m.startswith((DIRTY_LIVE, DIRTY_PLAN)) for m in members)


def test_the_aggregates_equal_the_clamped_sums_over_producers(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    _fleet(redis_url, redis_client, keys)
    aggregation = Aggregation(redis_client, keys)
    assert aggregation.tick() > 0
    for producer in PRODUCERS:  # every member folded in, and removed by the fold
        assert redis_client.scard(keys.for_producer(producer).dirty) == 0
    from_aggregates, summed = _both(redis_client, keys)
    assert from_aggregates == summed
    assert from_aggregates["cost"] == pytest.approx(3 * (0.5 + 1.0 + 1.5))
    assert from_aggregates["count"] == (4, True)
    assert from_aggregates["top"][0][0] == "shared"  # type: ignore[index]


def test_a_hostile_producer_lowers_nothing_the_others_counted(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    _fleet(redis_url, redis_client, keys)
    aggregation = Aggregation(redis_client, keys)
    aggregation.tick()
    alice = keys.for_producer("alice")
    cost = plan_field("plan.cost_usd", "", "sum")
    # Everything alice's rights allow on her own keys, and marking it for the worker.
    redis_client.hincrbyfloat(alice.plan("shared"), cost, -1000)
    redis_client.hset(alice.plan("shared"), plan_field("plan.cost_usd", "", "count"), "junk")
    redis_client.hset(alice.plan("own-bob"), cost, "1e400")  # infinite: counts nothing
    tokens = alice.live("actor.token_usage")
    for field in redis_client.hkeys(tokens):
        redis_client.hset(tokens, field, "-9e18" if field.endswith(b"count") else "nan")
    redis_client.hset(alice.live("context.tokens_used"), "|value", "0x7fffffff")
    redis_client.sadd(
        alice.dirty,
        DIRTY_PLAN + "shared",
        DIRTY_PLAN + "own-bob",
        DIRTY_LIVE + "actor.token_usage",
        DIRTY_LIVE + "context.tokens_used",
        "junk",
        DIRTY_LIVE + "no.such.key",
    )
    aggregation.tick()
    assert redis_client.scard(alice.dirty) == 0  # junk members dropped too
    from_aggregates, summed = _both(redis_client, keys)
    assert from_aggregates == summed
    # Bob's and carol's parts are all that is left of "shared", never less.
    assert from_aggregates["cost"] == pytest.approx(3 * (1.0 + 1.5))
    assert is_over_budget(redis_client, keys, "shared", budget_usd=7.49)
    tokens_left = [s for s in read_live(redis_client, keys, "actor.token_usage")]
    assert sum(s.count for s in tokens_left) == 2 * 2 * 5  # bob and carol, 5 calls each

    # A key of the wrong type under alice's prefix stops nothing but her own part.
    redis_client.delete(alice.live("actor.token_usage"), alice.dirty)
    redis_client.set(alice.live("actor.token_usage"), "x")
    redis_client.set(alice.dirty, "x")
    redis_client.sadd(keys.for_producer("bob").dirty, DIRTY_LIVE + "actor.token_usage")
    aggregation.tick()
    redis_client.set(keys.aggregate_fresh, "1")
    assert sum(s.count for s in read_live(redis_client, keys, "actor.token_usage")) == 20


def test_the_snapshot_gives_the_aggregates_figures_and_is_used_only_while_current(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    _fleet(redis_url, redis_client, keys)
    alice = keys.for_producer("alice")
    tokens = alice.live("actor.token_usage")
    for field in redis_client.hkeys(tokens):  # alice writes her own counts below zero
        redis_client.hset(tokens, field, "-9e18")
    redis_client.sadd(alice.dirty, DIRTY_LIVE + "actor.token_usage")
    aggregation = Aggregation(redis_client, keys)
    aggregation.tick()
    assert snapshot_fields(redis_client, keys) is not None  # current: read_live decodes it
    assert 0 < redis_client.pttl(keys.aggregate_snapshot) <= SNAPSHOT_TTL_MS
    from_snapshot = read_live(redis_client, keys)
    token_counts = [s.count for s in from_snapshot if s.key.value == "actor.token_usage"]
    assert sum(token_counts) == 2 * 2 * 5  # bob's and carol's: alice lowered nothing
    # The same series, exactly, as built from the aggregate hashes and (every series
    # with something counted) as summed over the producers without a worker.
    redis_client.delete(keys.aggregate_snapshot)
    assert snapshot_fields(redis_client, keys) is None
    assert read_live(redis_client, keys) == from_snapshot
    assert repr(read_live(redis_client, keys)) == repr(from_snapshot)  # 2.0 stays 2.0
    aggregation.tick()  # gone: rebuilt at the next tick
    assert read_live(redis_client, keys, "actor.token_usage") == [
        s for s in from_snapshot if s.key.value == "actor.token_usage"
    ]
    assert snapshot_fields(redis_client, keys) is not None  # what _both reads first
    from_snapshot_figures, summed = _both(redis_client, keys)
    assert from_snapshot_figures == summed  # per producer, alice clamped at zero
    redis_client.set(keys.aggregate_fresh, "1")

    # A fold the snapshot has not seen yet (a worker between folding and rebuilding):
    # the snapshot is stale, and readers take the aggregate hashes.
    _record(redis_url, keys, "bob", [_trace(0, "shared", 1.0)])
    aggregation._fold_live([("bob", "actor.token_usage")])
    assert snapshot_fields(redis_client, keys) is None
    stale = sum(token_counts)
    fresh = sum(s.count for s in read_live(redis_client, keys, "actor.token_usage"))
    assert fresh == stale + 2  # bob's call: a prompt and a completion count
    assert aggregation.snapshot.refresh()  # rebuilt, then current until it ages
    assert not aggregation.snapshot.refresh()
    assert snapshot_fields(redis_client, keys) is not None
    assert sum(s.count for s in read_live(redis_client, keys, "actor.token_usage")) == fresh
    # Older than SNAPSHOT_REFRESH_MS: rebuilt although nothing changed.
    redis_client.pexpire(keys.aggregate_snapshot, SNAPSHOT_TTL_MS - SNAPSHOT_REFRESH_MS - 1)
    assert aggregation.snapshot.refresh()
    # A snapshot built from an older version is never stored over a newer one.
    version = redis_client.hget(keys.aggregate_snapshot, SNAPSHOT_VERSION)
    redis_client.hincrby(keys.aggregate_snapshot, SNAPSHOT_VERSION, 1)
    stored = aggregation.snapshot._store(keys=[keys.aggregate_snapshot], args=[version, "x", 1000])
    assert stored == 0
    assert snapshot_fields(redis_client, keys) is None  # and the stale one is not read
    redis_client.delete(keys.aggregate_fresh)  # no worker: nothing of the snapshot is read
    aggregation.snapshot.rebuild()
    assert snapshot_fields(redis_client, keys) is None


def test_reruns_redeliveries_and_two_workers_count_nothing_twice(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    _fleet(redis_url, redis_client, keys)
    first, second = Aggregation(redis_client, keys), Aggregation(redis_client, keys)
    dirty = {p: redis_client.smembers(keys.for_producer(p).dirty) for p in PRODUCERS}
    first.tick()
    expected, _ = _both(redis_client, keys)
    # A worker that died after reading the dirty sets and before folding them: the
    # members come back (as a batch applied again would add them), and are folded again.
    for producer, members in dirty.items():
        redis_client.sadd(keys.for_producer(producer).dirty, *members)
    second.tick()
    first.tick()
    second.fold_everything()  # a worker starting meanwhile folds everything once
    first.fold_everything()
    again, summed = _both(redis_client, keys)
    assert again == expected == summed
    # Two workers folding the same new batches, interleaved.
    _record(redis_url, keys, "bob", [_trace(9, "shared", 4.0)])
    _record(redis_url, keys, "dave", [_trace(9, "shared", 8.0)])
    redis_client.sadd(keys.producers, "dave")
    threads = [threading.Thread(target=a.tick) for a in (first, second, first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final, summed = _both(redis_client, keys)
    assert final == summed
    assert final["cost"] == pytest.approx(9.0 + 4.0 + 8.0)


def test_a_plans_aggregate_expires_with_its_producers_hashes(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    _record(redis_url, keys, "alice", [_trace(0, "brief", 1.0)], plan_ttl_s=1)
    _record(redis_url, keys, "bob", [_trace(0, "brief", 2.0)], plan_ttl_s=2)
    _record(redis_url, keys, "bob", [_trace(0, "lasting", 2.0)])
    redis_client.sadd(keys.producers, "alice", "bob")
    aggregation = Aggregation(redis_client, keys)
    aggregation.tick()
    assert 1000 < redis_client.pttl(keys.aggregate_plan("brief")) <= 2000  # the longest
    assert count_plans(redis_client, keys) == (2, True)
    assert plan_cost_usd(redis_client, keys, "brief") == pytest.approx(3.0)

    def gone() -> bool:  # out of the ranking, and its hash expired (a moment later)
        aggregation.tick()
        return count_plans(redis_client, keys) == (1, True) and not redis_client.exists(
            keys.aggregate_plan("brief")
        )

    wait_until(gone, 10, "the brief plan to expire")
    assert plan_cost_usd(redis_client, keys, "brief") == 0.0
    assert read_plan(redis_client, keys, "brief") is None
    assert [p.plan_id for p in top_plans(redis_client, keys, 5).plans] == ["lasting"]
    assert not redis_client.exists(keys.aggregate_plan_producers("brief"))


def test_readers_sum_the_producers_themselves_when_no_worker_runs(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    _fleet(redis_url, redis_client, keys)
    assert not redis_client.exists(keys.aggregate_fresh)
    assert plan_cost_usd(redis_client, keys, "shared") == pytest.approx(9.0)  # no aggregate yet
    Aggregation(redis_client, keys).tick()
    redis_client.pexpire(keys.aggregate_fresh, 1)  # the last worker stopped long ago
    wait_until(lambda: not redis_client.exists(keys.aggregate_fresh), 5, "the mark to expire")
    _record(redis_url, keys, "bob", [_trace(0, "shared", 1.0)])  # not folded in
    assert plan_cost_usd(redis_client, keys, "shared") == pytest.approx(10.0)


@pytest.mark.slow
def test_a_running_worker_keeps_the_aggregates_within_a_tick(
    redis_url: str, redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    _fleet(redis_url, redis_client, keys)
    worker = Worker(
        WorkerSettings(redis_url, migrated(database_url), namespace=keys.namespace, block_ms=100)
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: redis_client.exists(keys.aggregate_fresh), 20, "the first fold")
        assert plan_cost_usd(redis_client, keys, "shared") == pytest.approx(9.0)
        _record(redis_url, keys, "erin", [_trace(0, "shared", 5.0)])  # a new producer
        wait_until(
            _equals(lambda: plan_cost_usd(redis_client, keys, "shared"), 14.0),
            20,
            "the new producer's cost in the aggregate",
        )
        assert redis_client.exists(keys.aggregate_plan("shared"))
    finally:
        worker.stop.set()
        thread.join(20)


def _equals(read: Callable[[], float], want: float) -> Callable[[], bool]:
    return lambda: abs(read() - want) < 1e-9
