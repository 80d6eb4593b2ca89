"""End-to-end freshness: how long after a record is made its row is committed, with
a producer offering a steady rate while a worker runs, and the highest steady rate
at which the backlog does not grow.

Offered load: :func:`benchmarks.load.drivers.offer` (one producer process); the
worker runs as its own process, as deployed. Freshness is ``ingested_at -
started_at`` of every row (see :mod:`benchmarks.load.rows`). A rate counts as
sustained when the producer achieved it, the backlog (records sent but not yet
stored, sampled twice a second) shows no upward trend over the second half of the
window, and the worker catches up within a second once the producer stops.

Each trial measures a pipeline in its steady state, as a running fleet is: before the
measured window a warm-up producer sends a few records and the trial waits until they
are stored, so the worker has found the producer's stream (a stream a worker has not
yet seen waits for its discovery walk, once per ``DISCOVER_INTERVAL_S``: a one-off per
producer identity, not per record) and made its connections. Only the rows started in
the measured window count. What the first records of a new producer wait is its own
figure (``first_records_ms``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Final

import redis

from benchmarks.load import baseline, drivers, isolated, rows
from benchmarks.load.context import Deadline, RunContext
from benchmarks.load.processes import WorkerProcess
from benchmarks.load.stats import slope_per_s

SAMPLE_INTERVAL_S: Final = 0.5
ACHIEVED_FRACTION: Final = 0.95
#: Backlog growth tolerated over the second half of a window, as a share of the rate.
GROWTH_FRACTION: Final = 0.03
CATCH_UP_LIMIT_S: Final = 1.0
LADDER_BUDGET_S: Final = 150.0
LADDER_MIN_RATE: Final = 1_000
#: The warm-up before a trial's window: records per second and seconds.
WARMUP_RATE: Final = 200
WARMUP_S: Final = 0.5


class _Count:
    value = 0


def _warm_up(ctx: RunContext, name: str, namespace: str, database_url: str, table: str) -> int:
    """Send a few records and wait until they are stored; the records stored, and how
    long the first of them waited (the new producer's discovery), in ms."""
    sent = drivers.offer(name, ctx.redis_url, namespace, WARMUP_RATE, WARMUP_S, _Count())["sent"]
    deadline = Deadline(30)
    stored = rows.count(database_url, table)
    while stored < sent and not deadline.expired():
        time.sleep(0.02)
        stored = rows.count(database_url, table)
    return stored


_LADDER_FIELDS: Final = (
    "offered_per_s",
    "achieved_per_s",
    "p50_ms",
    "p99_ms",
    "backlog_growth_per_s",
    "catch_up_s",
    "sustained",
)


def _stream(name: str, namespace: str) -> str:
    from fleettrace.keys import Keys

    keys = Keys(namespace)
    return keys.traces if name == drivers.FLEETTRACE else baseline.stream(keys)


def _wait_for_health(redis_url: str, namespace: str, worker: WorkerProcess) -> bool:
    """fleettrace's worker has no stream to join before a producer writes one (each
    producer has streams of its own, found by the worker's discovery): wait for the
    health snapshot its running loop writes instead."""
    from fleettrace.keys import Keys

    client = redis.Redis.from_url(redis_url)
    pattern = Keys(namespace).worker_health("*")
    deadline = Deadline(30)
    try:
        while not deadline.expired() and worker.running:
            if next(iter(client.scan_iter(match=pattern, count=1000)), None) is not None:
                time.sleep(0.5)  # the worker's first discovery and XREADGROUP are on their way
                return True
            time.sleep(0.05)
        return False
    finally:
        client.close()


def _wait_for_group(redis_url: str, stream: str, group: str, worker: WorkerProcess) -> bool:
    client = redis.Redis.from_url(redis_url)
    deadline = Deadline(30)
    try:
        while not deadline.expired() and worker.running:
            try:
                groups = client.xinfo_groups(stream)
            except redis.ResponseError:
                groups = []
            if any(g["name"] in (group, group.encode()) for g in groups):
                time.sleep(0.5)  # the worker's first XREADGROUP is on its way
                return True
            time.sleep(0.05)
        return False
    finally:
        client.close()


def trial(ctx: RunContext, name: str, offered: int, duration_s: float) -> dict[str, Any]:
    pipeline = drivers.pipeline(name)
    with ctx.scratch(f"fresh-{name}-{offered}") as (keys, database_url):
        drivers.prepare_database(name, database_url)
        worker = WorkerProcess(
            drivers.worker_argv(name, ctx.redis_url, keys.namespace, database_url, burst=False),
            label=f"{name} worker",
        )
        try:
            joined = (
                _wait_for_health(ctx.redis_url, keys.namespace, worker)
                if name == drivers.FLEETTRACE
                else _wait_for_group(
                    ctx.redis_url, _stream(name, keys.namespace), pipeline.group, worker
                )
            )
            if not joined:
                raise RuntimeError(f"{name} worker did not join its group: {worker.output_tail()}")
            warm = _warm_up(ctx, name, keys.namespace, database_url, pipeline.table)
            first_records = rows.freshness_ms(database_url, pipeline.table)
            window_start = datetime.now(UTC)
            produced = isolated.shared_counter()
            proc, conn = isolated.start(
                drivers.offer, name, ctx.redis_url, keys.namespace, offered, duration_s, produced
            )
            started = time.monotonic()
            backlog: list[tuple[float, float]] = []
            deadline = Deadline(duration_s + 120)
            while not conn.poll(0) and proc.is_alive() and not deadline.expired():
                time.sleep(SAMPLE_INTERVAL_S)
                stored = rows.count(database_url, pipeline.table) - warm
                backlog.append((time.monotonic() - started, produced.value - stored))
            sent = isolated.finish(proc, conn, timeout_s=max(deadline.left_s, 1))
            producer_done = time.monotonic()
            catch_up = Deadline(120)
            stored = rows.count(database_url, pipeline.table) - warm
            while stored < sent["sent"] and not catch_up.expired() and worker.running:
                time.sleep(0.05)
                stored = rows.count(database_url, pipeline.table) - warm
            catch_up_s = time.monotonic() - producer_done
        finally:
            code = worker.stop()
        fresh = rows.freshness_ms(database_url, pipeline.table, since=window_start)
        peak_rss = worker.peak_rss
        worker.discard_log()
    achieved = sent["sent"] / sent["seconds"] if sent["seconds"] else 0.0
    second_half = [p for p in backlog if p[0] >= duration_s / 2]
    growth = slope_per_s(second_half)
    sustained = (
        achieved >= ACHIEVED_FRACTION * offered
        and growth <= GROWTH_FRACTION * offered
        and catch_up_s <= CATCH_UP_LIMIT_S
        and stored >= sent["sent"]
    )
    return {
        "offered_per_s": offered,
        "achieved_per_s": round(achieved, 1),
        "seconds": round(sent["seconds"], 2),
        "sent": sent["sent"],
        "dropped": sent["dropped"],
        "rows_stored": stored,
        **fresh,
        "first_records_ms": first_records["max_ms"],
        "warm_up_rows": warm,
        "backlog_end": backlog[-1][1] if backlog else None,
        "backlog_growth_per_s": round(growth, 1),
        "catch_up_s": round(catch_up_s, 3),
        "sustained": sustained,
        "worker_exit_code": code,
        "worker_peak_rss_mb": round(peak_rss / 2**20, 1),
    }


def ladder(ctx: RunContext, name: str) -> dict[str, Any]:
    """Raise the offered rate step by step until the pipeline stops keeping up; when
    it cannot keep up with the first step, lower the rate step by step instead."""
    sizes = ctx.sizes
    offered = sizes.ladder_start if name == drivers.FLEETTRACE else sizes.baseline_ladder_start
    budget = Deadline(LADDER_BUDGET_S)
    trials: list[dict[str, Any]] = []
    best: int | None = None
    direction = 0  # +1 going up, -1 going down, 0 before the first trial
    while LADDER_MIN_RATE <= offered <= sizes.ladder_max and not budget.expired():
        result = trial(ctx, name, offered, sizes.ladder_s)
        trials.append({key: result[key] for key in _LADDER_FIELDS})
        if direction == 0:
            direction = 1 if result["sustained"] else -1
        if result["sustained"]:
            best = offered
            if direction < 0:
                break
            offered = int(offered * sizes.ladder_step)
        else:
            if direction > 0:
                break
            offered = int(offered / sizes.ladder_step)
    return {"max_steady_per_s": best, "trials": trials}


def run(ctx: RunContext) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ctx.pipelines():
        result[name] = {
            "rates": {
                str(offered): trial(ctx, name, offered, ctx.sizes.freshness_s)
                for offered in ctx.sizes.freshness_rates
            },
            "ladder": ladder(ctx, name),
        }
    return result
