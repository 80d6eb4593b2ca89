"""Figures for docs/reference/observability.md: what reading the live histograms costs
when each series is a sketch, on the machine's Redis.

    python -m benchmarks.live_read [--series 1000] [--values 200] [--sigma 0.5 2.0]

For each spread ``sigma`` it records ``--values`` log-normal durations (median 200 ms)
into each of ``--series`` label sets of ``tool.invocation_duration_ms``, then prints
the populated fields per series, the memory of the hash (MEMORY USAGE) per series,
and the fastest and the median of 5 ``read_live`` calls; then the same for the
classic layout of emitters before the sketches (``le=`` fields, a float sum), for
comparison. Each run uses its own namespace and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid

import redis

from fleettrace.keys import Keys, bucket_stat, live_field
from fleettrace.live import read_live
from fleettrace.metrics import MetricKey
from fleettrace.sketch import classic_bound, fine_stat, sum_parts

KEY = MetricKey.TOOL_INVOCATION_DURATION_MS


def fill(
    client: redis.Redis, keys: Keys, series: int, values: int, sigma: float, *, classic: bool
) -> int:
    """Write the hash an emitter would write (one before the sketches with
    ``classic``); the number of fields."""
    rng = random.Random(1)
    fields: dict[str, int] = {}
    for index in range(series):
        labels = f"tool=t{index}"
        whole = nanos = 0
        for _ in range(values):
            value = rng.lognormvariate(5.3, sigma)
            if classic:
                stat = live_field(labels, bucket_stat(classic_bound(value, KEY.spec.buckets)))
            else:
                stat = live_field(labels, fine_stat(value, KEY.spec.buckets))
            fields[stat] = fields.get(stat, 0) + 1
            w, n = sum_parts(value)
            whole, nanos = whole + w, nanos + n
        fields[live_field(labels, "count")] = values
        fields[live_field(labels, "sum.whole")] = whole
        fields[live_field(labels, "sum.nanos")] = nanos
    items = list(fields.items())
    for start in range(0, len(items), 10_000):
        client.hset(keys.live(KEY.value), mapping=dict(items[start : start + 10_000]))
    return len(fields)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--values", type=int, default=200)
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.5, 2.0])
    args = parser.parse_args()
    client = redis.Redis.from_url(
        os.environ.get("FLEETTRACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    runs = [(sigma, False) for sigma in args.sigma] + [(args.sigma[0], True)]
    for sigma, classic in runs:
        keys = Keys(f"bench-{uuid.uuid4().hex[:10]}")
        try:
            fields = fill(client, keys, args.series, args.values, sigma, classic=classic)
            memory = client.memory_usage(keys.live(KEY.value), samples=0) or 0
            times = []
            for _ in range(5):
                started = time.perf_counter()
                read = read_live(client, keys, KEY)
                times.append(time.perf_counter() - started)
            assert len(read) == args.series
            layout = "classic le= layout" if classic else "sketch"
            print(
                f"{layout} sigma={sigma} series={args.series} values={args.values}: "
                f"{fields / args.series:.1f} fields/series, "
                f"{memory / args.series:.0f} bytes/series, "
                f"read_live fastest {min(times) * 1000:.0f} ms, "
                f"median {statistics.median(times) * 1000:.0f} ms"
            )
        finally:
            client.delete(keys.live(KEY.value))


if __name__ == "__main__":
    main()
