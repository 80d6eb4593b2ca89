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


def _command_usec(client: redis.Redis) -> tuple[int, int]:
    """Calls and microseconds Redis has spent running batch calls (FCALL, or EVALSHA
    on Redis 6.2) since its statistics were last reset."""
    stats = client.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_fcall", "cmdstat_evalsha"):
        entry = stats.get(name) or {}
        calls += int(entry.get("calls", 0))
        usec += int(entry.get("usec", 0))
    return calls, usec


def run(ctx: RunContext) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ctx.pipelines(worker=False):
        records = (
            ctx.sizes.producer_records
            if name == drivers.FLEETTRACE
            else ctx.sizes.baseline_producer_records
        )
        keys = ctx.namespace(f"producer-{name}")
        client = redis.Redis.from_url(ctx.redis_url)
        calls_before, usec_before = _command_usec(client)
        measured = isolated.call(
            drivers.produce, name, ctx.redis_url, keys.namespace, records, timeout_s=600
        )
        calls_after, usec_after = _command_usec(client)
        in_redis = _records_in_redis(client, name, keys)
        counted = _prompt_tokens_counted(client, keys)
        entries = int(
            client.xlen(
                keys.traces if name == drivers.FLEETTRACE else drivers.baseline.stream(keys)
            )
        )
        client.close()
        ctx.drop_namespace(keys)
        # Redis's own time for the batch calls of this run (the machine's other clients
        # make none during it): the ceiling one Redis thread sets for this producer.
        redis_us = (
            round((usec_after - usec_before) / in_redis, 3)
            if name == drivers.FLEETTRACE and in_redis and calls_after > calls_before
            else None
        )
        result[name] = {
            "records": records,
            "seconds": round(measured["seconds"], 3),
            "records_per_s": rate(in_redis, measured["seconds"]),
            "records_in_redis": in_redis,
            "stream_entries": entries,
            "dropped": measured["dropped"],
            "counters_match": abs(counted - measured["expected_prompt_tokens"]) < 0.5,
            **(
                {
                    "redis_us_per_record": redis_us,
                    "sender_encode_us_per_record": measured.get("sender_encode_us_per_record"),
                }
                if name == drivers.FLEETTRACE
                else {}
            ),
        }
    return result
