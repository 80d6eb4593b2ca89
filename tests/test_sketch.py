"""The sketch behind the live histograms: its error bound at every scale, merging by
addition, zero, the collapse rule, classic buckets summed exactly from fine ones,
exact sums, and live hashes still holding the ``le=`` fields of older emitters."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import redis

from fleettrace.counters import aggregate
from fleettrace.keys import Keys, bucket_stat, live_field
from fleettrace.live import read_live
from fleettrace.metrics import SPECS, MetricKey, MetricType
from fleettrace.model import MAX_METRIC_VALUE, MetricSample
from fleettrace.sketch import (
    GAMMA,
    MAX_BUCKETS_PER_SIGN,
    MIN_INDEX,
    MIN_MAGNITUDE,
    PROMISED_RELATIVE_ERROR,
    RELATIVE_ACCURACY,
    Sketch,
    classic_bound,
    exact_sum,
    fine_stat,
    nearest_rank,
    sum_parts,
)
from tests.emitting import live_hash, make_emitter

TOOL = MetricKey.TOOL_INVOCATION_DURATION_MS
HISTOGRAM_BOUNDS = sorted(
    {spec.buckets for spec in SPECS.values() if spec.type is MetricType.HISTOGRAM}
)


def sketch_of(values: list[float], bounds: tuple[float, ...]) -> Sketch:
    stats: dict[str, str] = {}
    for value in values:
        stat = fine_stat(value, bounds)
        stats[stat] = str(int(stats.get(stat, "0")) + 1)
    return Sketch.from_stats(stats, bounds)


def edge_values(bounds: tuple[float, ...]) -> list[float]:
    """Every classic bound and its float neighbours, plus a geometric sweep over the
    whole range a sample may take."""
    values = [10 ** (e / 7) for e in range(-9 * 7, 15 * 7 + 1)]
    for bound in bounds:
        values += [math.nextafter(bound, 0), bound, math.nextafter(bound, math.inf)]
    return values


@pytest.mark.parametrize("bounds", HISTOGRAM_BOUNDS)
def test_every_value_is_reported_within_the_accuracy(bounds: tuple[float, ...]) -> None:
    for value in edge_values(bounds):
        estimate = sketch_of([value], bounds).quantile(0.5)
        assert estimate is not None
        assert abs(estimate - value) <= RELATIVE_ACCURACY * value, value


@pytest.mark.parametrize("bounds", HISTOGRAM_BOUNDS)
def test_classic_buckets_are_the_fine_ones_summed_exactly(bounds: tuple[float, ...]) -> None:
    values = edge_values(bounds)
    exact: dict[float, int] = {}
    for value in values:
        bound = classic_bound(value, bounds)
        exact[bound] = exact.get(bound, 0) + 1
    assert sketch_of(values, bounds).classic() == exact


def test_merging_is_adding_counts() -> None:
    rng = random.Random(7)
    bounds = TOOL.spec.buckets
    parts = [[rng.lognormvariate(0, 3) for _ in range(500)] for _ in range(3)]
    merged: dict[str, int] = {}
    for part in parts:
        for value in part:
            stat = fine_stat(value, bounds)
            merged[stat] = merged.get(stat, 0) + 1
    together = Sketch.from_stats({k: str(v) for k, v in merged.items()}, bounds)
    everything = [v for part in parts for v in part]
    assert together == sketch_of(everything, bounds)
    for q in (0.01, 0.5, 0.95, 0.99, 1.0):
        exact = nearest_rank(everything, q)
        assert together.quantile(q) == pytest.approx(exact, rel=RELATIVE_ACCURACY)


def test_zero_and_negative_values_have_buckets_of_their_own() -> None:
    bounds = (1.0, 10.0)
    values = [-50.0, -2.0, 0.0, 0.0, 0.0, 3.0, 7.0]
    sketch = sketch_of(values, bounds)
    assert [fine_stat(v, bounds) for v in (0.0, -0.0)] == ["d=z/1.0", "d=z/1.0"]
    assert fine_stat(-2.0, bounds).startswith("d=n")
    for q in (0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 1.0):
        exact = nearest_rank(values, q)
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= RELATIVE_ACCURACY * abs(exact), q
    assert sketch.quantile(0.5) == 0.0
    assert Sketch.from_stats({}, bounds).quantile(0.5) is None


def test_tiny_values_collapse_into_the_lowest_bucket_and_buckets_are_bounded() -> None:
    bounds = TOOL.spec.buckets
    assert fine_stat(1e-12, bounds) == fine_stat(MIN_MAGNITUDE, bounds) == f"d=p{MIN_INDEX}/1.0"
    estimate = sketch_of([1e-300], bounds).quantile(0.5)
    assert estimate is not None and estimate < MIN_MAGNITUDE * (1 + RELATIVE_ACCURACY)
    # A sweep finer than the buckets over every value a sample may take fills every
    # bucket there is: never more than the stated cap.
    step = math.log(MAX_METRIC_VALUE / 1e-12) / (4 * MAX_BUCKETS_PER_SIGN)
    sweep = [1e-12 * math.exp(i * step) for i in range(4 * MAX_BUCKETS_PER_SIGN + 1)]
    stats = {fine_stat(v, bounds) for v in [*sweep, MAX_METRIC_VALUE, 0.0]}
    assert len(stats) <= MAX_BUCKETS_PER_SIGN + len(bounds) + 1
    assert len(stats) > MAX_BUCKETS_PER_SIGN - 2


def test_malformed_fine_fields_are_ignored() -> None:
    stats = {"d=p3/1.0": "2", "d=x3/1.0": "5", "d=p/1.0": "1", "d=p4/abc": "1", "count": "9"}
    sketch = Sketch.from_stats(stats, (1.0,))
    assert sketch.total == 2


@pytest.mark.parametrize(
    ("value", "parts"),
    [(0.1, (0, 100_000_000)), (2.0, (2, 0)), (1e15, (10**15, 0)), (0.9999999999, (1, 0))],
)
def test_sum_parts(value: float, parts: tuple[int, int]) -> None:
    assert sum_parts(value) == parts
    # The resolution of an exact sum is a billionth of a unit.
    assert abs(exact_sum(*parts) - value) <= 0.5e-9 * max(1.0, abs(value)) * (1 + 1e-6)


@pytest.mark.slow
def test_a_million_increments_of_a_tenth_read_back_as_exactly_100000(
    keys: Keys, redis_client: redis.Redis
) -> None:
    batch = [MetricSample(key=TOOL, value=0.1, labels={"tool": "t"})] * 1000
    deltas = aggregate([], batch)
    pipe = redis_client.pipeline(transaction=False)
    for _ in range(1000):  # one batch of 1,000 samples applied a thousand times
        for (metric_key, field), amount in deltas.increments.items():
            pipe.hincrby(keys.live(metric_key), field, amount)
        for (metric_key, field), amount in deltas.float_increments.items():
            pipe.hincrbyfloat(keys.live(metric_key), field, amount)
    pipe.execute()
    # For contrast, the float sum before: each batch summed in a float (as the
    # aggregation did) and added with HINCRBYFLOAT.
    batch_sum = 0.0
    for sample in batch:
        batch_sum += sample.value
    drifting = keys.live("drift-contrast")
    pipe = redis_client.pipeline(transaction=False)
    for _ in range(1000):
        pipe.hincrbyfloat(drifting, "sum", batch_sum)
    pipe.execute()
    [series] = read_live(redis_client, keys, TOOL)
    assert (series.count, series.sum) == (1_000_000, 100000.0)
    assert float(redis_client.hget(drifting, "sum") or 0) != 100000.0


def test_emitter_writes_fine_buckets_and_exact_sums(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys)
    for _ in range(10):
        emitter.observe(TOOL, 0.1, {"tool": "t"})
    emitter.observe(TOOL, 0.0, {"tool": "t"})
    assert emitter.close()
    fields = live_hash(redis_client, keys, TOOL.value)
    assert {stat: v for (_, stat), v in fields.items() if stat.startswith("d=")} == {
        fine_stat(0.1, TOOL.spec.buckets): "10",
        "d=z/1.0": "1",
    }
    assert fields[("tool=t", "count")] == "11"
    # Whole units and billionths, as integers, however the emitter cut its batches.
    whole, nanos = (int(fields.get(("tool=t", stat), "0")) for stat in ("sum.whole", "sum.nanos"))
    assert whole * 10**9 + nanos == 10**9
    [series] = read_live(redis_client, keys, TOOL)
    assert series.sum == 1.0
    assert series.p50 == pytest.approx(0.1, rel=RELATIVE_ACCURACY)


def test_le_fields_of_older_emitters_count_in_classic_buckets_not_in_quantiles(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    # What an emitter before the sketches left: classic buckets and a float sum.
    hash_key = keys.live(TOOL.value)
    redis_client.hset(
        hash_key,
        mapping={
            live_field("tool=t", "count"): 3,
            live_field("tool=t", "sum"): 4.5,
            live_field("tool=t", bucket_stat(1.0)): 1,
            live_field("tool=t", bucket_stat(5.0)): 2,
        },
    )
    emitter = make_emitter(redis_url, keys)
    for value in (0.2, 0.3, 7.0):
        emitter.observe(TOOL, value, {"tool": "t"})
    assert emitter.close()
    stats = {stat for _, stat in live_hash(redis_client, keys, TOOL.value)}
    assert {"le=1.0", "le=5.0", fine_stat(7.0, TOOL.spec.buckets)} <= stats
    [series] = read_live(redis_client, keys, TOOL)
    assert series.count == 6
    assert series.sum == pytest.approx(4.5 + 7.5)
    counts = dict(series.buckets)
    assert (counts[1.0], counts[5.0], counts[10.0], counts[math.inf]) == (3, 2, 1, 0)
    assert sum(counts.values()) == series.count
    assert series.unsketched == 3
    # Quantiles from the three sketched values only: 0.2, 0.3, 7.0.
    assert series.p50 == pytest.approx(0.3, rel=RELATIVE_ACCURACY)
    assert series.p99 == pytest.approx(7.0, rel=RELATIVE_ACCURACY)


def test_the_reference_states_the_bound_and_the_memory_of_the_code() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs/reference/observability.md").read_text()
    section = text.split("### Live quantiles (sketches)")[1].split("\n### ")[0]
    assert PROMISED_RELATIVE_ERROR == 0.02 and "within **2 %**" in section
    assert f"`a = {RELATIVE_ACCURACY}`" in section
    assert f"`MAX_BUCKETS_PER_SIGN` = {MAX_BUCKETS_PER_SIGN:,}" in section
    assert MIN_MAGNITUDE == 1e-9 and "`MIN_MAGNITUDE` = 1e-9" in section
    # log buckets + one piece per classic bound + zero + count, sum.whole, sum.nanos
    cap = MAX_BUCKETS_PER_SIGN + len(TOOL.spec.buckets) + 1 + 3
    assert f"at most {cap:,} fields" in section
    assert f"about {round(math.log(10) / math.log(GAMMA))} buckets per factor of ten" in section


def test_fine_buckets_of_bounds_a_key_no_longer_has_still_report_their_values() -> None:
    # Written when the key's classic bounds were (2.5, 7.0); read with (5.0, 10.0).
    values = [3.0, 6.5, 8.0]
    stats = {fine_stat(v, (2.5, 7.0)): "1" for v in values}
    sketch = Sketch.from_stats(stats, (5.0, 10.0))
    for q, exact in ((0.3, 3.0), (0.6, 6.5), (1.0, 8.0)):
        assert sketch.quantile(q) == pytest.approx(exact, rel=RELATIVE_ACCURACY)


def test_sums_past_the_range_of_hincrby_stay_exact_and_fail_nothing(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    # 10,000 of the largest value a sample may take: 1e19, past HINCRBY's 9.2e18.
    emitter = make_emitter(redis_url, keys)
    for _ in range(10_000):
        emitter.observe(TOOL, MAX_METRIC_VALUE, {"tool": "huge"})
    assert emitter.close()
    assert emitter.stats.dropped == 0
    assert live_hash(redis_client, keys, TOOL.value)[("tool=huge", "sum.whole")] == str(10**19)
    [series] = read_live(redis_client, keys, TOOL)
    assert (series.count, series.sum) == (10_000, 1e19)
    assert series.p50 == pytest.approx(MAX_METRIC_VALUE, rel=RELATIVE_ACCURACY)
    # A whole number written with an exponent is still read exactly.
    redis_client.hset(keys.live(TOOL.value), "tool=huge|sum.whole", "1.5E+3")
    [series] = read_live(redis_client, keys, TOOL)
    assert series.sum == 1500.0
