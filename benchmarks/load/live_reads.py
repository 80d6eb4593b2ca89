"""Live reads with 1,000 producer identities, 1,000 label sets and 50,000 plans: a
budget check, ``fleettrace metrics --json`` and a ``/metrics`` scrape while a worker
keeps the aggregates and their snapshot, beside the same reads summing the producers'
hashes (the path without a worker) and built from the aggregate hashes, measured in
the same run (benchmarks/producers.py does the work)."""

from __future__ import annotations

from typing import Any

import redis

from benchmarks.load.context import RunContext
from benchmarks.producers import PLANS, PRODUCERS, delete_namespace, measure

QUICK_PRODUCERS = 100
QUICK_PLANS = 5000


def run(ctx: RunContext) -> dict[str, Any]:
    client = redis.Redis.from_url(ctx.redis_url)
    keys = ctx.namespace("live-reads")
    try:
        if ctx.quick:
            return measure(client, keys, QUICK_PRODUCERS, QUICK_PLANS)
        return measure(client, keys, PRODUCERS, PLANS)
    finally:
        delete_namespace(client, keys)
        client.close()
