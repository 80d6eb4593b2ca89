"""The worker's history of the fleet's LLM totals, and the windows read from it
(worker/fleettrace_worker/serve/history.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import redis

from fleettrace.keys import Keys
from fleettrace.live import read_live
from fleettrace_worker.serve.aggregator import Aggregation
from fleettrace_worker.serve.history import (
    HISTORY_INTERVAL_S,
    HISTORY_KEEP_S,
    History,
    Totals,
    windows,
)
from tests.emitting import make_emitter
from tests.factories import llm_trace


def _emit(redis_url: str, keys: Keys, first: int, n: int, **settings: object) -> None:
    """``n`` calls: every third unpriced (a model the price table lacks), every fourth
    failed, every fifth retried; the others priced at 0.01 * (i + 1) USD."""
    emitter = make_emitter(redis_url, keys, **settings)
    for i in range(first, first + n):
        fields: dict[str, object] = {"latency_ms": 10.0 + i}
        if i % 3 == 0:
            fields.update(provider="selfhosted", model="house-llm", cost_usd=None)
        else:
            fields["cost_usd"] = round(0.01 * (i + 1), 6)
        if i % 4 == 0:
            fields["error"] = "Timeout: slow"
        if i % 5 == 0:
            fields["retry_count"] = 2
        emitter.record(llm_trace(**fields))
    assert emitter.close()


def _expected(first: int, n: int) -> Totals:
    calls = range(first, first + n)
    priced = [i for i in calls if i % 3]
    return Totals(
        n,
        len(priced),
        sum(round(0.01 * (i + 1), 6) for i in priced),
        sum(1 for i in calls if i % 4 == 0),
        sum(1 for i in calls if i % 5 == 0),
    )


def _same(found: Totals | None, expected: Totals) -> None:
    assert found is not None
    assert (found.calls, found.priced_calls, found.errors, found.retried) == (
        expected.calls,
        expected.priced_calls,
        expected.errors,
        expected.retried,
    )
    assert found.cost_usd == pytest.approx(expected.cost_usd, rel=1e-9)


def test_windows_are_the_totals_now_less_the_sample_at_their_start(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    now = time.time()
    history = History(redis_client, keys)
    assert windows(redis_client, keys, Totals(), [("1h", now - 3600)])[0].item(now) == {
        "window": "1h",
        "start": datetime.fromtimestamp(now - 3600, UTC).isoformat(),
        "from": None,
        "complete": False,
        "calls": None,
        "calls_per_minute": None,
        "cost_usd": None,
        "unpriced_calls": None,
        "error_rate": None,
        "retry_rate": None,
    }
    assert history.record(now - 3 * 3600)  # nothing counted yet: all zero
    _emit(redis_url, keys, 0, 12)
    assert Aggregation(redis_client, keys).fold_everything()  # what the worker reads
    assert history.record(now - 1800)
    _emit(redis_url, keys, 12, 8)
    assert Aggregation(redis_client, keys).fold_everything()
    current = Totals.of(read_live(redis_client, keys))
    _same(current, _expected(0, 20))

    hour, half, days = windows(
        redis_client, keys, current, [("1h", now - 3600), ("30m", now - 1800), ("2d", now - 172800)]
    )
    # The last half hour: its sample is of the minute it starts in.
    assert half.complete and half.start == (now - 1800) // 60 * 60
    _same(half.figures, _expected(12, 8))
    # No sample within a minute of the hour's start, none at all two days back: the
    # figures count from the sample before (3 hours back) or the oldest one, and say so.
    for window in (hour, days):
        assert not window.complete and window.start == (now - 3 * 3600) // 60 * 60
        _same(window.figures, _expected(0, 20))
    item = half.item(now)
    assert item["calls"] == 8
    assert item["calls_per_minute"] == 8 / ((now - (now - 1800) // 60 * 60) / 60)
    assert item["cost_usd"] == pytest.approx(_expected(12, 8).cost_usd, rel=1e-9)
    assert item["unpriced_calls"] == 3  # calls 12, 15 and 18
    assert item["error_rate"] == 2 / 8  # 12 and 16
    assert item["retry_rate"] == 1 / 8  # 15
    assert item["from"].startswith(time.strftime("%Y-%m-%dT%H:%M", time.gmtime(half.start)))
    # A total below its sample (counters that went away) counts nothing, not less.
    assert Totals(1, 0, 0.0, 0, 0).since(Totals(5, 2, 1.5, 1, 1)) == Totals()


def test_one_sample_a_minute_whoever_writes_and_only_the_last_25_hours(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    now = time.time() // HISTORY_INTERVAL_S * HISTORY_INTERVAL_S + 1
    first, second = History(redis_client, keys), History(redis_client, keys)
    assert first.record(now - HISTORY_KEEP_S - 120)  # too old once a newer sample comes
    assert first.record(now - HISTORY_KEEP_S)
    assert first.record_due(now)
    stored = redis_client.zrange(keys.aggregate_history, 0, -1, withscores=True)
    assert [score for _, score in stored] == [now - 1 - HISTORY_KEEP_S, now - 1]
    assert not first.record_due(now + 5)  # the same minute: not even asked again
    assert not second.record(now + 5)  # another worker: the minute has its sample
    _emit(redis_url, keys, 0, 3)
    assert Aggregation(redis_client, keys).fold_everything()
    assert second.record_due(now + HISTORY_INTERVAL_S)
    stored = redis_client.zrange(keys.aggregate_history, 0, -1, withscores=True)
    assert [score for _, score in stored] == [now - 1, now - 1 + HISTORY_INTERVAL_S]
    assert b'"calls":3' in stored[1][0] and b'"calls":0' in stored[0][0]


def test_the_aggregation_ticks_store_the_minute_sample(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    _emit(redis_url, keys, 0, 6)
    aggregation = Aggregation(redis_client, keys)
    assert aggregation.fold_everything()
    aggregation.tick()
    [(member, score)] = redis_client.zrange(keys.aggregate_history, 0, -1, withscores=True)
    assert score % HISTORY_INTERVAL_S == 0 and time.time() - score < 2 * HISTORY_INTERVAL_S
    assert b'"calls":6,"priced_calls":4,' in member  # calls 0 and 3 unpriced
    [window] = windows(redis_client, keys, Totals.of(read_live(redis_client, keys)), [("1m", 0)])
    _same(window.figures, Totals())  # nothing counted since the sample
    # A sample that is not one (written by hand) gives no figures rather than wrong ones.
    redis_client.zadd(keys.aggregate_history, {b"not json": 1.0})
    [window] = windows(redis_client, keys, Totals(), [("old", 10)])
    assert (window.start, window.figures) == (1.0, None)
    assert window.item(time.time())["calls"] is None


def test_each_shard_keeps_its_own_history_and_the_windows_sum_the_shards(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    now = time.time()
    shards = [keys, keys.for_shard(1)]
    redis_client.sadd(keys.shard_registry, 1)
    for shard in shards:
        assert History(redis_client, shard).record(now - 3630)  # before any call
    _emit(redis_url, keys, 0, 6, shards=2, shard=0)
    _emit(redis_url, keys, 6, 9, shards=2, shard=1)
    for shard in shards:  # each shard's worker: its sample holds that shard's calls
        assert Aggregation(redis_client, shard).fold_everything()
    latest = [redis_client.zrange(shard.aggregate_history, -1, -1)[0] for shard in shards]
    assert b'"calls":6,' in latest[0] and b'"calls":9,' in latest[1]
    current = Totals.of(read_live(redis_client, keys))
    _same(current, _expected(0, 15))
    [hour] = windows(redis_client, keys, current, [("1h", now - 3600)])
    assert hour.complete
    _same(hour.figures, _expected(0, 15))
    # A shard without a sample leaves the window without figures, not short of them.
    redis_client.delete(shards[1].aggregate_history)
    [hour] = windows(redis_client, keys, current, [("1h", now - 3600)])
    assert (hour.start, hour.figures) == (None, None)


def test_counters_of_the_layout_before_per_producer_keys_count_in_the_sample(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    _emit(redis_url, keys, 1, 2)  # two priced calls
    redis_client.hset(keys.legacy_live("llm.latency_ms"), "provider=a,model=b|count", 3)
    assert Aggregation(redis_client, keys).fold_everything()
    [member] = redis_client.zrange(keys.aggregate_history, 0, -1)
    assert b'"calls":5,"priced_calls":2,' in member  # as read_live sums them
    assert Totals.of(read_live(redis_client, keys)).calls == 5
