"""Reads with many producer identities: how long the readers that sum over producers
take with 1,000 of them (docs/reference/observability.md quotes the figures).

Writes, in a namespace of its own on the Redis of ``FLEETTRACE_REDIS_URL`` (default
the local one), what 1,000 producers would have counted (a few series of three
metric keys and the hashes of ``PLANS`` plans each), registers them in the producer
set as the worker does, times each reader, and deletes the namespace.

    .venv/bin/python -m benchmarks.producers [PRODUCERS]
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Callable

import redis

from fleettrace.connection import DEFAULT_REDIS_URL, redis_url_from_env
from fleettrace.keys import Keys, plan_field
from fleettrace.live import is_over_budget, plan_cost_usd, read_live
from fleettrace.plans import read_plan, top_plans

PLANS = 10
RUNS = 7


def populate(client: redis.Redis, keys: Keys, producers: int) -> None:
    pipe = client.pipeline(transaction=False)
    for n in range(producers):
        mine = keys.for_producer(f"agent-{n:04d}")
        for token_type in ("prompt", "completion"):
            labels = f"provider=openai,model=gpt-4o,token_type={token_type}"
            pipe.hset(
                mine.live("actor.token_usage"),
                mapping={f"{labels}|count": 10, f"{labels}|sum": 1000},
            )
        pipe.hset(
            mine.live("tool.invocation_duration_ms"),
            mapping={"tool=search|count": 3, "tool=search|sum": 30.5, "tool=search|le=10.0": 3},
        )
        for p in range(PLANS):
            pipe.hset(
                mine.plan(f"plan-{p}"),
                mapping={
                    plan_field("plan.cost_usd", "", "count"): 1,
                    plan_field("plan.cost_usd", "", "sum"): 0.01 * (p + 1),
                },
            )
        pipe.sadd(keys.producers, mine.producer)
        if n % 100 == 99:
            pipe.execute()
    pipe.execute()


def timed(call: Callable[[], object]) -> float:
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main(producers: int = 1000) -> None:
    client = redis.Redis.from_url(redis_url_from_env() or DEFAULT_REDIS_URL)
    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}")
    try:
        populate(client, keys, producers)
        readers: dict[str, Callable[[], object]] = {
            "plan_cost_usd / is_over_budget": lambda: is_over_budget(
                client, keys, "plan-3", budget_usd=1.0
            ),
            "read_plan": lambda: read_plan(client, keys, "plan-3"),
            "read_live (every key)": lambda: read_live(client, keys),
            "read_live (one key)": lambda: read_live(client, keys, "actor.token_usage"),
            f"top_plans(5) over {producers * PLANS:,} plan hashes": lambda: top_plans(
                client, keys, 5
            ),
        }
        assert abs(plan_cost_usd(client, keys, "plan-3") - 0.04 * producers) < 1e-6
        print(f"{producers} producers, median of {RUNS} runs:")
        for name, call in readers.items():
            print(f"  {name}: {timed(call):.1f} ms")
    finally:
        for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
            client.delete(key)
        client.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
