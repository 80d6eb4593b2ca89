"""Live quantiles against the truth: known distributions recorded by several emitter
processes into the real Redis, stored by the worker's persist loop into a fresh
PostgreSQL database; every live p50/p95/p99 is within 2 % of the exact nearest-rank
percentile of the same values, and of ``percentile_disc`` over the stored rows."""

from __future__ import annotations

import math
import multiprocessing
import random
import threading
from collections.abc import Callable

import psycopg
import pytest
import redis

from fleettrace import hooks
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys
from fleettrace.live import QUANTILES, read_live
from fleettrace.metrics import MetricKey
from fleettrace.model import MetricSample
from fleettrace.sketch import PROMISED_RELATIVE_ERROR, nearest_rank
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.loop import LoopSettings
from tests.emitting import make_emitter, stream_records
from tests.worker_helpers import migrated

PROCESSES = 3
PER_PROCESS = 1500
KEY = MetricKey.TOOL_INVOCATION_DURATION_MS


def _bimodal(rng: random.Random) -> float:
    # Fast cache hits near 0.2 ms and slow calls near 800 ms: a nearest-rank quantile
    # is always one of the recorded values, never a point in the gap.
    if rng.random() < 0.7:
        return rng.uniform(0.15, 0.25)
    return rng.uniform(700.0, 900.0)


#: name -> (value of observation i made by a process with this generator, how many
#: observations each process makes).
DISTRIBUTIONS: dict[str, tuple[Callable[[random.Random], float], int]] = {
    "uniform": (lambda rng: rng.uniform(0.0, 100.0), PER_PROCESS),
    "lognormal": (lambda rng: rng.lognormvariate(0.0, 2.0), PER_PROCESS),
    "bimodal": (_bimodal, PER_PROCESS),
    "all-equal": (lambda rng: 42.0, PER_PROCESS),
    # 1 us to about 2.8 hours, in milliseconds: ten orders of magnitude.
    "nine-orders": (lambda rng: 10 ** rng.uniform(-3.0, 7.0), PER_PROCESS),
    "zero-and-tiny": (lambda rng: rng.choice((0.0, 0.0, 1e-3, 2e-3, 5e-4)), PER_PROCESS),
}
#: Recorded by the first process only: a series of one observation.
SINGLE = ("single", 0.2137)


def values_of(name: str, process: int) -> list[float]:
    """What process ``process`` records for a distribution (same seed, same values)."""
    make, count = DISTRIBUTIONS[name]
    rng = random.Random(f"{name}-{process}")
    return [make(rng) for _ in range(count)]


def record(redis_url: str, namespace: str, process: int) -> None:
    emitter = Emitter(
        EmitterSettings(redis_url=redis_url, namespace=namespace, max_batch_records=500)
    )
    for name in DISTRIBUTIONS:
        for value in values_of(name, process):
            emitter.observe(KEY, value, {"tool": name})
    if process == 0:
        emitter.observe(KEY, SINGLE[1], {"tool": SINGLE[0]})
    assert emitter.flush(60)
    assert emitter.close()
    assert emitter.stats.dropped == 0


def within(estimate: float | None, exact: float) -> bool:
    assert estimate is not None
    return abs(estimate - exact) <= PROMISED_RELATIVE_ERROR * abs(exact)


@pytest.mark.slow
def test_live_quantiles_are_within_two_percent_of_the_exact_ones(
    redis_url: str, keys: Keys, redis_client: redis.Redis, database_url: str
) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=record, args=(redis_url, keys.namespace, i))
        for i in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0

    truth = {
        name: [v for i in range(PROCESSES) for v in values_of(name, i)] for name in DISTRIBUTIONS
    }
    truth[SINGLE[0]] = [SINGLE[1]]

    # The rows: the worker's persist loop, in burst mode, into a fresh database.
    db = migrated(database_url)
    pool = create_pool(db, min_size=1, max_size=2)
    try:
        consumer = Consumer(redis_client, keys, PERSIST_GROUP, "w1")
        loop = PersistLoop(consumer, LLMTraceRepository(pool), LoopSettings(burst=True), pool=pool)
        loop.run(threading.Event())
    finally:
        pool.close()
    with psycopg.connect(db) as conn:
        stored = {
            (tool, q): value
            for tool, q, value in conn.execute(
                "SELECT labels->>'tool', q, percentile_disc(q) WITHIN GROUP (ORDER BY value)"
                " FROM metric_samples, unnest(%s::float8[]) AS q"
                " WHERE key = %s GROUP BY labels->>'tool', q",
                (list(QUANTILES), KEY.value),
            )
        }
        rows = dict(
            conn.execute(
                "SELECT labels->>'tool', count(*) FROM metric_samples GROUP BY 1"
            ).fetchall()
        )
    assert rows == {name: len(values) for name, values in truth.items()}

    live = {dict(s.labels)["tool"]: s for s in read_live(redis_client, keys, KEY)}
    assert set(live) == set(truth)
    misses = []
    for name, values in truth.items():
        series = live[name]
        assert series.count == len(values)
        assert series.sum == pytest.approx(math.fsum(values), rel=1e-12)
        for q, estimate in zip(QUANTILES, (series.p50, series.p95, series.p99), strict=True):
            exact = nearest_rank(values, q)
            assert stored[(name, q)] == exact  # percentile_disc is nearest rank
            if not (within(estimate, exact) and within(estimate, stored[(name, q)])):
                misses.append((name, q, estimate, exact))
    assert misses == []


def test_fast_actors_and_tools_timed_by_the_hooks_read_their_true_percentiles(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    """The case the coarse buckets got wrong: sub-millisecond actors and tools read
    "p50 5 ms" and "p50 0.5 ms". Now the live percentiles are those of the durations
    the hooks recorded (read back from the metrics stream), within 2 %."""
    emitter = make_emitter(redis_url, keys)
    for i in range(300):
        with hooks.actor("coder", emitter=emitter):
            sum(range(i % 50))
        with hooks.tool("fetch", emitter=emitter):
            pass
    assert emitter.close()
    recorded: dict[str, list[float]] = {}
    for sample in stream_records(redis_client, keys.metrics):
        assert isinstance(sample, MetricSample)
        if sample.key in (MetricKey.ACTOR_INVOCATION_DURATION_MS, KEY):
            recorded.setdefault(sample.key.value, []).append(sample.value)
    assert {key: len(values) for key, values in recorded.items()} == {
        MetricKey.ACTOR_INVOCATION_DURATION_MS.value: 300,
        KEY.value: 300,
    }
    for key, values in recorded.items():
        [series] = read_live(redis_client, keys, key)
        assert max(values) < 10.0  # all in the first classic bucket of the actor key
        for q, estimate in zip(QUANTILES, (series.p50, series.p95, series.p99), strict=True):
            assert within(estimate, nearest_rank(values, q)), (key, q, estimate)
