"""Producer throughput: records per second one process gets into Redis, stream
entries and live counters included, counted from the first ``record()`` to the end
of the flush that puts the last one in Redis. The records are built beforehand (the
agent builds them whatever the pipeline), so what is measured is the pipeline."""

from __future__ import annotations

from typing import Any

import redis

from benchmarks.load import drivers, isolated
from benchmarks.load.context import RunContext
from benchmarks.load.stats import rate
from fleettrace.keys import EMITTER_RECORDS, Keys


def _prompt_tokens_counted(client: redis.Redis, keys: Keys) -> float:
    fields = client.hgetall(keys.live("actor.token_usage"))
    return sum(float(v) for f, v in fields.items() if f.endswith(b"token_type=prompt|sum"))


def _records_in_redis(client: redis.Redis, name: str, keys: Keys) -> int:
    if name == drivers.FLEETTRACE:
        # Written by the same script call as the entries, so it counts what they hold.
        return int(client.hget(keys.emitter, EMITTER_RECORDS) or 0)
    return int(client.xlen(drivers.baseline.stream(keys)))


def run(ctx: RunContext) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ctx.pipelines(worker=False):
        records = (
            ctx.sizes.producer_records
            if name == drivers.FLEETTRACE
            else ctx.sizes.baseline_producer_records
        )
        keys = ctx.namespace(f"producer-{name}")
        measured = isolated.call(
            drivers.produce, name, ctx.redis_url, keys.namespace, records, timeout_s=600
        )
        client = redis.Redis.from_url(ctx.redis_url)
        in_redis = _records_in_redis(client, name, keys)
        counted = _prompt_tokens_counted(client, keys)
        entries = int(
            client.xlen(
                keys.traces if name == drivers.FLEETTRACE else drivers.baseline.stream(keys)
            )
        )
        client.close()
        ctx.drop_namespace(keys)
        result[name] = {
            "records": records,
            "seconds": round(measured["seconds"], 3),
            "records_per_s": rate(in_redis, measured["seconds"]),
            "records_in_redis": in_redis,
            "stream_entries": entries,
            "dropped": measured["dropped"],
            "counters_match": abs(counted - measured["expected_prompt_tokens"]) < 0.5,
        }
    return result
