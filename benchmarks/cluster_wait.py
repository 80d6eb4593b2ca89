"""What waiting for a replica costs the emitter on a Redis Cluster: records per second
from the first ``record()`` to the end of ``flush()``, with ``WAIT 1`` after each batch
(the default on a cluster with replicas) and without it (``wait_replicas=0``), beside
the same emitter on the single Redis of ``FLEETTRACE_REDIS_URL`` (the comparator),
all in one run. docs/scaling.md quotes the figures.

Starts a local cluster of three masters and three replicas for the run (as the tests
do, tests/cluster.py) unless ``--cluster-url`` names the seed of one.

    .venv/bin/python -m benchmarks.cluster_wait [--records N] [--cluster-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fleettrace.connection import DEFAULT_REDIS_URL, connect_redis
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.environment import redis_url_from_env
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace

RUNS = 3


def cluster_records(count: int) -> list[LLMTrace]:
    """The records the cluster benchmarks send: 50 plans, varied tokens and latencies."""
    return [
        LLMTrace(
            model="gpt-4o",
            provider="openai",
            actor="planner",
            plan_id=f"plan-{i % 50}",
            prompt_tokens=100 + i % 50,
            completion_tokens=20 + i % 9,
            latency_ms=float(10 + i % 100),
        )
        for i in range(count)
    ]


def _rate(url: str, cluster: bool, records: list[LLMTrace], batch: int, **wait: Any) -> float:
    """Records per second of one emitter sending ``records`` in batches of ``batch``."""
    keys = Keys(f"bench-cw-{uuid.uuid4().hex[:8]}")
    emitter = Emitter(
        EmitterSettings(
            redis_url=url,
            namespace=keys.namespace,
            redis_cluster=cluster,
            max_batch_records=batch,
            max_buffer_records=len(records) + 1,
            **wait,
        )
    )
    try:
        started = time.perf_counter()
        for record in records:
            emitter.record(record)
        if not emitter.flush(120):
            raise RuntimeError("the emitter did not drain within 120 s")
        elapsed = time.perf_counter() - started
    finally:
        emitter.close()
        client = connect_redis(url, cluster=cluster)
        try:
            for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
                client.delete(key)
        finally:
            client.close()
    return len(records) / elapsed


@contextmanager
def _cluster(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.cluster import LocalCluster  # only when no cluster is given

    cluster = LocalCluster()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--cluster-url")
    args = parser.parse_args()
    records = cluster_records(args.records)
    single = redis_url_from_env() or DEFAULT_REDIS_URL
    with _cluster(args.cluster_url) as url:
        print(f"{args.records} records per run, median of {RUNS} runs, records/s")
        print(f"{'batch':>6} {'single Redis':>13} {'cluster':>9} {'cluster+WAIT 1':>15}")
        for batch in (100, 1000):
            rows = [
                statistics.median(_rate(single, False, records, batch) for _ in range(RUNS)),
                statistics.median(
                    _rate(url, True, records, batch, wait_replicas=0) for _ in range(RUNS)
                ),
                statistics.median(_rate(url, True, records, batch) for _ in range(RUNS)),
            ]
            print(f"{batch:>6} {rows[0]:>13,.0f} {rows[1]:>9,.0f} {rows[2]:>15,.0f}")


if __name__ == "__main__":
    main()
