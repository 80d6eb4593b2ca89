"""Live reads with many producer identities: a budget check, ``fleettrace metrics
--json`` and a ``/metrics`` scrape with 1,000 producers, 1,000 label sets and 50,000
plans, read from the worker's aggregates and, as the comparator in the same run, by
summing the producers' hashes (what readers do when no worker runs, and what every
read did before the aggregates). docs/performance.md quotes the figures.

Writes, in a namespace of its own on the Redis of ``FLEETTRACE_REDIS_URL`` (default
the local one), what the producers' batches would have written (their live hashes,
their plan hashes and their dirty sets), registers them in the producer set as the
worker's discovery does, times each reader summing the producers, folds everything
into the aggregates as a starting worker does (timed too), times each reader again,
and deletes the namespace.

    .venv/bin/python -m benchmarks.producers [PRODUCERS] [PLANS]

The load harness runs the same measurement as its ``live_reads`` section.
"""

from __future__ import annotations

import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from fleettrace.connection import DEFAULT_REDIS_URL
from fleettrace.keys import DIRTY_LIVE, DIRTY_PLAN, Keys, escape_value, plan_field
from fleettrace.live import is_over_budget, plan_cost_usd, read_live
from fleettrace.settings import redis_url_from_env
from fleettrace_worker.cli import render
from fleettrace_worker.cli.metrics import series_json
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.serve.aggregator import Aggregation
from fleettrace_worker.serve.http import serve
from fleettrace_worker.stream.groups import GroupLimits
from fleettrace_worker.stream.loop import GroupLoop
from fleettrace_worker.stream.loopstate import LoopStats

PRODUCERS = 1000
PLANS = 50_000
#: Producers that count for the plan the budget check reads.
SHARED_BY = 3
RUNS = 7
#: Plans the scrape exports with a plan label (``--metrics-plans``).
SCRAPE_PLANS = 10


@dataclass
class _Consumer:
    streams: tuple[str, ...] = ()


@dataclass
class _Loop:
    """A group loop as /metrics sees it: its figures and its consumer's streams (none
    here), so the scrape reads the groups of known streams as a worker's does."""

    group: str = PERSIST_GROUP
    stats: LoopStats = field(default_factory=lambda: LoopStats(PERSIST_GROUP))
    consumer: _Consumer = field(default_factory=_Consumer)


@dataclass
class _Status:
    """What /metrics needs of a worker: one loop that found no stream, default limits."""

    keys: Keys
    group_limits: GroupLimits = field(default_factory=GroupLimits)

    @property
    def loops(self) -> list[GroupLoop[object]]:
        return [_Loop()]  # type: ignore[list-item]

    def ready(self) -> bool:
        return True


def populate(client: redis.Redis, keys: Keys, producers: int, plans: int) -> int:
    """Write what the producers' batches would have; the number of label sets."""
    pipe = client.pipeline(transaction=False)
    label_sets: set[tuple[str, str]] = set()
    for n in range(producers):
        mine = keys.for_producer(f"agent-{n:04d}")
        dirty = [DIRTY_LIVE + "actor.token_usage", DIRTY_LIVE + "actor.invocation_duration_ms"]
        for token_type in ("prompt", "completion"):
            labels = f"provider=openai,model=gpt-4o,token_type={token_type}"
            label_sets.add(("actor.token_usage", labels))
            pipe.hset(
                mine.live("actor.token_usage"),
                mapping={f"{labels}|count": 10, f"{labels}|sum.whole": 1000},
            )
        actor = f"actor=actor-{n:04d}"  # one label set per producer
        label_sets.add(("actor.invocation_duration_ms", actor))
        pipe.hset(
            mine.live("actor.invocation_duration_ms"),
            mapping={
                f"{actor}|count": 3,
                f"{actor}|sum.whole": 912,
                f"{actor}|d=p1/250.0": 2,
                f"{actor}|d=p1/400.0": 1,
            },
        )
        own = [f"plan-{p}" for p in range(n, plans, producers)]
        shared = ["plan-shared"] if n < SHARED_BY else []
        for plan in own + shared:
            pipe.hset(
                mine.plan(plan),
                mapping={
                    plan_field("plan.cost_usd", "", "count"): 1,
                    plan_field("plan.cost_usd", "", "sum"): 0.01 + n / 1e5,
                },
            )
            pipe.expire(mine.plan(plan), 3600)
            dirty.append(DIRTY_PLAN + escape_value(plan))
        pipe.sadd(mine.dirty, *dirty)
        pipe.sadd(keys.producers, mine.producer)
        if n % 50 == 49:
            pipe.execute()
    pipe.execute()
    return len(label_sets)


def timed(call: Callable[[], object], runs: int = RUNS) -> float:
    """Median milliseconds of ``runs`` calls."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1000, 2)


def _readers(client: redis.Redis, keys: Keys, port: int) -> dict[str, Callable[[], object]]:
    def scrape() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as answer:
            answer.read()

    return {
        "is_over_budget_ms": lambda: is_over_budget(client, keys, "plan-shared", budget_usd=1.0),
        "read_live_ms": lambda: read_live(client, keys),
        "metrics_json_ms": lambda: _metrics_json(read_live(client, keys)),
        "scrape_ms": scrape,
    }


def _metrics_json(series: list[Any]) -> str:
    """What `fleettrace metrics --json` prints for these series (its list shape)."""
    items = [series_json(one) for one in series]
    return render.dumps({"items": items, "next_cursor": None})


def measure(
    client: redis.Redis, keys: Keys, producers: int = PRODUCERS, plans: int = PLANS
) -> dict[str, Any]:
    """Both read paths' timings, and what folding everything once cost."""
    label_sets = populate(client, keys, producers, plans)
    server = serve("127.0.0.1:0", _Status(keys), client, plans=SCRAPE_PLANS)
    try:
        readers = _readers(client, keys, server.port)
        client.delete(keys.aggregate_fresh)
        summed = {name: timed(call, 3) for name, call in readers.items()}
        expected = plan_cost_usd(client, keys, "plan-shared")
        started = time.perf_counter()
        Aggregation(client, keys).fold_everything()
        fold_s = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        Aggregation(client, keys).tick()  # nothing left to do: the cost of an idle tick
        idle_tick_ms = round((time.perf_counter() - started) * 1000, 2)
        client.set(keys.aggregate_fresh, "1")  # no worker keeps it fresh during the timing
        aggregated = {name: timed(call) for name, call in readers.items()}
        assert abs(plan_cost_usd(client, keys, "plan-shared") - expected) < 1e-9
    finally:
        server.shutdown()
        server.server_close()
    return {
        "producers": producers,
        "plans": plans + 1,
        "label_sets": label_sets,
        "aggregates": aggregated,
        "summing_producers": summed,
        "fold_everything_s": fold_s,
        "idle_tick_ms": idle_tick_ms,
    }


def delete_namespace(client: redis.Redis, keys: Keys) -> None:
    pipe = client.pipeline(transaction=False)
    for n, key in enumerate(client.scan_iter(match=f"{keys.prefix}*", count=1000)):
        pipe.unlink(key)
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()


def main(producers: int = PRODUCERS, plans: int = PLANS) -> None:
    client = redis.Redis.from_url(redis_url_from_env() or DEFAULT_REDIS_URL)
    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}")
    try:
        figures = measure(client, keys, producers, plans)
    finally:
        delete_namespace(client, keys)
        client.close()
    print(
        f"{figures['producers']} producers, {figures['label_sets']} label sets, "
        f"{figures['plans']:,} plans; median ms (aggregates vs summing producers):"
    )
    for name, ours in figures["aggregates"].items():
        print(f"  {name[:-3]}: {ours} vs {figures['summing_producers'][name]}")
    print(f"  folding everything once (a worker's start): {figures['fold_everything_s']} s")
    print(f"  an idle aggregation tick: {figures['idle_tick_ms']} ms")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
