"""The ``shards`` section: what an emitter fleet pushes into one namespace split into 1,
2 and 3 shards (``FLEETTRACE_SHARDS``) on a local Redis Cluster of three masters and
three replicas (tests/cluster.py), in records per second, all in one run; the 1-shard
figure is the comparator of the others. docs/scaling.md quotes the figures.

The fleet is ``EMITTERS`` processes, the i-th told ``FLEETTRACE_SHARD=i mod N``; each
waits for a common start time, sends its records through the real emitter (default
settings: on this cluster each batch waits for its master's replica) and reports when
it began and when ``flush()`` returned. The rate is every record over the span from the
first start to the last end; the median of ``RUNS`` runs. Beside it, what the busiest
master spent (``INFO cpu``, user and system) per 10,000 records: the load sharding
takes off one master, which other work on a shared machine skews far less than a
rate. Each run uses a fresh namespace whose shards 0, 1 and 2 hash to three different
masters. Skipped, with the reason, when a cluster cannot be started here (no
``redis-server`` with cluster mode or no ``redis-cli``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any, Final

from benchmarks.cluster_wait import cluster_records
from benchmarks.load.context import RunContext
from benchmarks.load.processes import ROOT
from benchmarks.load.row import Row, get
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys

EMITTERS: Final = 3
RUNS: Final = 3
SHARD_COUNTS: Final = (1, 2, 3)
FULL_RECORDS: Final = 20_000  # per emitter process
QUICK_RECORDS: Final = 1_000
_START_DELAY_S: Final = 1.5  # time for the processes to import and connect


def run(ctx: RunContext) -> dict[str, Any]:
    try:
        from tests.cluster import LocalCluster  # only for this section: it imports pytest

        cluster = LocalCluster()
        cluster.start()
    except BaseException as error:  # pytest.skip's exception too: not an Exception
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        reason = f"no local Redis Cluster here: {type(error).__name__}: {error}"
        print(f"shards section skipped: {reason}", file=sys.stderr, flush=True)
        return {"skipped": reason}
    records = QUICK_RECORDS if ctx.quick else FULL_RECORDS
    try:
        each = {
            str(n): [_fleet_run(cluster, n, records) for _ in range(RUNS)] for n in SHARD_COUNTS
        }
        rates = {n: statistics.median(rate for rate, _ in runs) for n, runs in each.items()}
        busiest = {n: statistics.median(cpu for _, cpu in runs) for n, runs in each.items()}
        masters = len(cluster.masters())
    finally:
        cluster.close()
    return {
        "records_per_s": {n: round(rate) for n, rate in rates.items()},
        "every_run_records_per_s": {n: [round(r) for r, _ in runs] for n, runs in each.items()},
        "busiest_master_cpu_ms_per_10k": {n: round(cpu, 1) for n, cpu in busiest.items()},
        "emitters": EMITTERS,
        "records_per_emitter": records,
        "runs": RUNS,
        "masters": masters,
    }


def _spread_namespace(cluster: Any) -> str:
    """A fresh namespace whose first three shards sit on three different masters."""
    while True:
        keys = Keys(f"bench-sh-{uuid.uuid4().hex[:8]}")
        tags = [keys.for_shard(s).producers for s in range(max(SHARD_COUNTS))]
        if len({cluster.master_of(tag) for tag in tags}) == len(tags):
            return keys.namespace


def _master_cpu_s(cluster: Any) -> dict[int, float]:
    """CPU seconds (user and system) each master has used so far (INFO cpu)."""
    used = {}
    for port in cluster.masters():
        node = cluster.node(port)
        try:
            info = node.info("cpu")
            used[port] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        finally:
            node.close()
    return used


def _fleet_run(cluster: Any, shards: int, records: int) -> tuple[float, float]:
    """(records per second of the fleet, the busiest master's CPU ms per 10,000 records)."""
    before = _master_cpu_s(cluster)
    rate = _fleet_rate(cluster, shards, records)
    after = _master_cpu_s(cluster)
    busiest_s = max(after[port] - before.get(port, 0.0) for port in after)
    return rate, busiest_s * 1000 * 10_000 / (EMITTERS * records)


def _fleet_rate(cluster: Any, shards: int, records: int) -> float:
    namespace = _spread_namespace(cluster)
    start_at = time.time() + _START_DELAY_S
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETTRACE_")}
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "benchmarks.load.shards"),
                *(cluster.url, namespace, str(records), str(start_at)),
            ],
            env={**env, "FLEETTRACE_SHARDS": str(shards), "FLEETTRACE_SHARD": str(i % shards)},
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(EMITTERS)
    ]
    spans = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"an emitter process failed with exit code {proc.returncode}")
        spans.append(json.loads(out))
    _delete(cluster, namespace)
    elapsed = max(s["ended"] for s in spans) - min(s["started"] for s in spans)
    return EMITTERS * records / elapsed


def _delete(cluster: Any, namespace: str) -> None:
    for port in cluster.masters():
        node = cluster.node(port)
        try:
            for match in ("{" + namespace + "}*", "{" + namespace + ":*"):
                for key in node.scan_iter(match=match, count=1000):
                    node.delete(key)
        finally:
            node.close()


def shard_rows(section: dict[str, Any]) -> list[Row]:
    """One row per shard count; the comparator is the 1-shard figure of the same run."""
    if not section:
        return []
    if "skipped" in section:
        return [
            Row(
                "shards",
                "emitter fleet",
                "records/s",
                None,
                None,
                "higher",
                note=section["skipped"],
            )
        ]
    one = get(section, "records_per_s", "1")
    note = (
        f"{section['emitters']} emitter processes x {section['records_per_emitter']:,} records, "
        f"median of {section['runs']}, {section['masters']} masters; comparator: 1 shard"
    )
    rows = [
        Row("shards", f"emitter fleet, {n} shard(s)", "records/s", rate, one, "higher", note=note)
        for n, rate in section["records_per_s"].items()
    ]
    cpu = section.get("busiest_master_cpu_ms_per_10k", {})
    rows += [
        Row(
            "shards",
            f"busiest master's CPU, {n} shard(s)",
            "ms/10k records",
            ms,
            cpu.get("1"),
            "lower",
            note="Redis CPU (INFO cpu) of the master that did the most, per 10,000 records",
        )
        for n, ms in cpu.items()
    ]
    return rows


def _emit(url: str, namespace: str, count: int, start_at: float) -> None:
    """One emitter process of the fleet: prints its start and end times as JSON."""
    records = cluster_records(count)
    settings = EmitterSettings.from_env(
        redis_url=url, namespace=namespace, redis_cluster=True, max_buffer_records=count + 1
    )
    emitter = Emitter(settings)
    time.sleep(max(0.0, start_at - time.time()))
    started = time.time()
    for record in records:
        emitter.record(record)
    if not emitter.flush(300):
        raise SystemExit("the emitter did not drain within 300 s")
    ended = time.time()
    emitter.close()
    print(json.dumps({"started": started, "ended": ended, "shard": settings.chosen_shard()}))


if __name__ == "__main__":
    url, namespace, count, start_at = sys.argv[1:]
    _emit(url, namespace, int(count), float(start_at))
