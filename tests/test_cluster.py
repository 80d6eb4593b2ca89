"""fleettrace on a real Redis Cluster (three masters, three replicas, tests/cluster.py):
the pipeline end to end, a graceful failover under load, and a killed master with the
emitters waiting for a replica. Every record is stored exactly once and the live
counters equal the sums of the stored rows (a batch applied twice would count twice).

The first test needs no server: the keys one batch, the consumer and the aggregates
use all hash to the namespace's slot.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import redis
from redis.cluster import key_slot

from fleettrace.batch_script import library_loaded
from fleettrace.batching import encode_calls
from fleettrace.cluster import slot_client
from fleettrace.cluster_settings import ReplicaWait
from fleettrace.connection import connect_redis
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys
from fleettrace.live import plan_cost_usd
from fleettrace.pricing import Pricer
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.keys import GROUPS
from fleettrace_worker.process import Worker
from tests.cluster import LocalCluster, redis_cluster  # noqa: F401 (the fixture)
from tests.factories import numbered_sample, numbered_trace
from tests.servers import free_port
from tests.waiting import wait_until
from tests.worker_helpers import ROOT, fleettrace, http_get, migrated, scalar, trace_rows

PLANS = [f"plan-{i}" for i in range(7)]  # numbered_trace's plans


def _slot(keys: Keys) -> int:
    return key_slot(keys.producers.encode())


def test_every_key_of_a_namespace_hashes_to_its_slot() -> None:
    keys = Keys("slot-check", "agent-7")
    records = [numbered_trace(i) for i in range(30)] + [numbered_sample(i) for i in range(5)]
    numbers = iter(range(1, 100))
    calls = encode_calls(keys, "e1", lambda: next(numbers), Pricer().price_records(records), 2)
    touched = [key for call in calls.calls for key in call.keys]
    assert len(touched) > 10  # the sequence key, streams, figures, live, plans, dirty set
    touched += [
        *keys.streams,
        *keys.legacy_streams,
        keys.producers,
        keys.dirty,
        keys.emitter,
        keys.emitter_seq("e1"),
        keys.worker_health("w1"),
        keys.aggregate_fresh,
        keys.aggregate_plan_costs,
        keys.aggregate_plan_expiry,
        keys.aggregate_live("plan.cost_usd"),
        keys.aggregate_seen("agent-7", "plan.cost_usd"),
        keys.aggregate_gauges("plan.cost_usd"),
        keys.aggregate_plan("plan-1"),
        keys.aggregate_plan_producers("plan-1"),
        keys.legacy_live("plan.cost_usd"),
        keys.legacy_plan("plan-1"),
        *(keys.dead_letters(group) for group in GROUPS),
    ]
    assert {key_slot(key.encode()) for key in touched} == {_slot(keys)}
    other = Keys("slot-check-2")
    assert _slot(other) != _slot(keys)  # the tag is the namespace: fleets spread


# -- on the cluster ----------------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> str:
    return migrated(database_url)


def _namespace() -> Keys:
    return Keys(f"cl-{uuid.uuid4().hex[:10]}")


def _settings(
    cluster: LocalCluster, db: str, keys: Keys, consumer: str, **options: Any
) -> WorkerSettings:
    return WorkerSettings(
        cluster.url,
        db,
        namespace=keys.namespace,
        consumer=consumer,
        block_ms=100,
        claim_idle_ms=1_000,
        retry_max_s=0.5,
        redis_cluster=True,
        **options,
    )


@contextmanager
def _workers(
    cluster: LocalCluster, db: str, keys: Keys, count: int, **options: Any
) -> Iterator[list[Worker]]:
    """``count`` workers in threads on the cluster (``options``: more settings of the
    first); each must exit 0 when stopped."""
    workers = [
        Worker(_settings(cluster, db, keys, f"w{i}", **(options if i == 0 else {})))
        for i in range(count)
    ]
    results: list[int] = []
    threads = [threading.Thread(target=lambda w=w: results.append(w.run())) for w in workers]
    for thread in threads:
        thread.start()
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop.set()
        for thread in threads:
            thread.join(60)
    assert results == [0] * count


def _producers(
    cluster: LocalCluster,
    keys: Keys,
    count: int,
    each: int,
    seconds: float,
    *,
    first: int = 0,
    env_each: Sequence[Mapping[str, str]] = (),
) -> list[subprocess.Popen[str]]:
    """``count`` producer processes of ``each`` traces (ids from ``first`` on), the
    i-th with ``env_each[i]`` added to its environment."""
    env = {**os.environ, "FLEETTRACE_REDIS_CLUSTER": "true"}
    env.pop("FLEETTRACE_PRODUCER", None)
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.producer",
                keys.namespace,
                cluster.url,
                str(first + i * each),
                str(each),
                "0",
                str(seconds),
            ],
            env={**env, **(env_each[i] if i < len(env_each) else {})},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]


def _finished(procs: list[subprocess.Popen[str]]) -> list[str]:
    """Each producer's report line; every one must have sent all it accepted."""
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (out, err[-2000:])
        lines.append(out.strip())
    return lines


def _sql_plan_costs(db: str) -> dict[str, float]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT plan_id, sum(cost_usd) FROM llm_traces GROUP BY plan_id"
        ).fetchall()
    return {str(plan): float(total) for plan, total in rows}


def _assert_stored_once_and_counted(client: redis.Redis, db: str, keys: Keys, total: int) -> None:
    """``total`` rows, one per trace id, and each plan's live cost equal to its rows'."""
    wait_until(lambda: trace_rows(db) >= total, 60, f"{total} rows")
    assert trace_rows(db) == total
    assert scalar(db, "SELECT count(DISTINCT trace_id) FROM llm_traces") == total
    stored = _sql_plan_costs(db)
    assert set(stored) == set(PLANS)

    def live_costs() -> dict[str, float]:
        return {plan: plan_cost_usd(client, keys, plan) for plan in PLANS}

    def counted_once() -> bool:
        live = live_costs()
        return all(math.isclose(live[plan], stored[plan], rel_tol=1e-9) for plan in PLANS)

    # The worker's aggregates follow the producers' counters a tick behind.
    try:
        wait_until(counted_once, 30, "the live plan costs to equal the stored ones")
    except AssertionError:
        assert live_costs() == stored  # shows which plans differ, and by how much


def _keys_in_cluster(cluster: LocalCluster) -> dict[int, list[bytes]]:
    """Every key on every live master, by port."""
    found: dict[int, list[bytes]] = {}
    for port, proc in cluster.procs.items():
        if proc.poll() is not None:
            continue
        node = cluster.node(port)
        try:
            if node.info("replication")["role"] == "master":
                found[port] = list(node.scan_iter(count=1000))
        finally:
            node.close()
    return found


@pytest.mark.slow
@pytest.mark.redis_version(7, 0)  # the function library on a cluster
def test_the_pipeline_end_to_end_on_a_cluster(
    redis_cluster: LocalCluster,  # noqa: F811
    db: str,
) -> None:
    keys = _namespace()
    client = connect_redis(redis_cluster.url, cluster=True)
    master = redis_cluster.master_of(keys.producers)
    others = [
        redis_cluster.node(port) for port in _keys_in_cluster(redis_cluster) if port != master
    ]
    monitors = [node.monitor() for node in others]
    for monitor in monitors:
        monitor.__enter__()
    seen_elsewhere: list[str] = []

    def watch(monitor: Any) -> None:
        try:
            for command in monitor.listen():
                seen_elsewhere.append(str(command["command"]))
        except (redis.ConnectionError, ValueError, AttributeError):
            return

    watchers = [threading.Thread(target=watch, args=(m,), daemon=True) for m in monitors]
    for watcher in watchers:
        watcher.start()
    emitter = Emitter(
        EmitterSettings(
            redis_url=redis_cluster.url,
            namespace=keys.namespace,
            redis_cluster=True,
            flush_interval_s=0.01,
        )
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with _workers(redis_cluster, db, keys, 1, http=f"127.0.0.1:{port}", dashboard=True):
            for i in range(300):
                emitter.record(numbered_trace(i))
            assert emitter.flush(30)
            _assert_stored_once_and_counted(client, db, keys, 300)
            # What the worker serves reads the cluster too: probes, /metrics, dashboard.
            wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 30, "the worker ready")
            status, metrics = http_get(f"{base}/metrics")
            assert status == 200 and "fleettrace_actor_token_usage_total{" in metrics
            status, overview = http_get(f"{base}/api/overview")
            assert status == 200, overview
            status, plans = http_get(f"{base}/api/plans")
            assert status == 200 and "plan-6" in plans, plans
        stats = emitter.stats
        assert (stats.sent, stats.dropped) == (300, 0)
    finally:
        emitter.close()
        for monitor in monitors:
            monitor.connection.disconnect()
        client.close()
    # Nothing of the namespace went to another master: what they saw has no key of
    # it, and every key of the namespace sits on the master of its slot.
    # (redis-py asks any node COMMAND GETKEYS for where a command's keys are: no data.)
    assert not [c for c in seen_elsewhere if keys.prefix in c and not c.startswith("COMMAND ")]
    # (The watch saw something: the worker asks every master for the function library.)
    assert any(c.startswith("FUNCTION LIST") for c in seen_elsewhere)
    everywhere = _keys_in_cluster(redis_cluster)
    mine = {
        port: [k for k in ks if k.startswith(keys.prefix.encode())]
        for port, ks in everywhere.items()
    }
    assert mine[master]
    assert not [k for port, ks in mine.items() if port != master for k in ks]
    assert {key_slot(k) for k in mine[master]} == {_slot(keys)}


@pytest.mark.slow
@pytest.mark.redis_version(7, 0)  # the function library on a cluster
def test_a_graceful_failover_under_load_stores_every_record_once(
    redis_cluster: LocalCluster,  # noqa: F811
    db: str,
) -> None:
    keys = _namespace()
    client = connect_redis(redis_cluster.url, cluster=True)
    master = redis_cluster.master_of(keys.producers)
    replica = redis_cluster.replica_of(master)
    try:
        with _workers(redis_cluster, db, keys, 2):
            procs = _producers(redis_cluster, keys, 3, 400, 2.0)
            wait_until(lambda: trace_rows(db) > 0, 60, "the first rows")
            redis_cluster.failover(replica)
            assert redis_cluster.master_of(keys.producers) == replica
            lines = _finished(procs)
            assert all(line == "accepted=400 sent=400 dropped=0" for line in lines), lines
            _assert_stored_once_and_counted(client, db, keys, 1200)
        # The promoted replica holds the batch function (FUNCTION LOAD replicates).
        promoted = redis_cluster.node(replica)
        listed = promoted.function_list(library="fleettrace")
        assert listed and listed[0][1] == b"fleettrace"
        promoted.close()
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.redis_version(7, 0)  # the function library on a cluster
@pytest.mark.parametrize("wait_replicas", [None, 0], ids=["waiting", "not-waiting"])
def test_a_slot_moved_under_load_is_followed_by_the_emitter_and_the_worker(
    redis_cluster: LocalCluster,  # noqa: F811
    db: str,
    wait_replicas: int | None,
) -> None:
    """Resharding the namespace's slot: ASK and TRYAGAIN while its keys move, MOVED
    after; the emitter retries (through its master's connection when it waits for a
    replica, through the cluster client when not), the worker reads on from the new
    master."""
    keys = _namespace()
    client = connect_redis(redis_cluster.url, cluster=True)
    source = redis_cluster.master_of(keys.producers)
    target = next(port for port in redis_cluster.masters() if port != source)
    emitter = Emitter(
        EmitterSettings(
            redis_url=redis_cluster.url,
            namespace=keys.namespace,
            redis_cluster=True,
            flush_interval_s=0.01,
            max_batch_records=20,
            retry_max_s=0.2,
            wait_replicas=wait_replicas,
        )
    )
    moving = threading.Event()

    def record() -> None:
        for i in range(600):
            emitter.record(numbered_trace(i))
            if i == 300:
                moving.wait(30)  # half before the move, half during and after it

    recorder = threading.Thread(target=record)
    try:
        with _workers(redis_cluster, db, keys, 1):
            recorder.start()
            wait_until(lambda: trace_rows(db) > 0, 60, "the first rows")
            moving.set()
            assert redis_cluster.move_slot(_slot(keys), source, target) > 0
            recorder.join(60)
            assert emitter.flush(60)
            assert redis_cluster.master_of(keys.producers) == target
            _assert_stored_once_and_counted(client, db, keys, 600)
        assert (emitter.stats.sent, emitter.stats.dropped) == (600, 0)
    finally:
        emitter.close()
        client.close()


@pytest.mark.slow
@pytest.mark.redis_version(7, 0)  # the function library on a cluster
def test_a_batch_no_replica_confirms_stays_buffered_and_is_applied_once(
    redis_cluster: LocalCluster,  # noqa: F811
) -> None:
    keys = _namespace()
    client = connect_redis(redis_cluster.url, cluster=True)
    # Two replicas asked for, one there: the batch is applied, never confirmed.
    emitter = Emitter(
        EmitterSettings(
            redis_url=redis_cluster.url,
            namespace=keys.namespace,
            redis_cluster=True,
            wait_replicas=2,
            wait_timeout_ms=20,
            flush_interval_s=0.01,
            retry_initial_s=0.01,
            retry_max_s=0.05,
        )
    )
    try:
        emitter.record(numbered_trace(1))
        wait_until(lambda: emitter.stats.send_failures >= 3, 30, "three unconfirmed sends")
        stats = emitter.stats
        assert (stats.sent, stats.buffered, stats.dropped) == (0, 1, 0)
        assert "1 of 2 replicas acknowledged the write within 20 ms" in str(stats.last_error)
        # Each retry re-sent the same batch: the master holds it once.
        assert client.xlen(keys.traces) == 1
    finally:
        assert emitter.close(0.1) is False  # never confirmed: dropped and counted at close
        client.close()


@pytest.mark.slow
@pytest.mark.redis_version(7, 0)  # the function library on a cluster
def test_the_cli_works_on_the_cluster(
    redis_cluster: LocalCluster,  # noqa: F811
    db: str,
) -> None:
    """``migrate --redis-cluster`` loads the library on every master, a worker loads
    it again where it went, and the readers (``groups list``, ``metrics --top``) find
    the namespace's streams and plans on its master."""
    for port in redis_cluster.masters():
        node = redis_cluster.node(port)
        node.function_delete("fleettrace")
        node.close()
    client = connect_redis(redis_cluster.url, cluster=True)
    keys = _namespace()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETTRACE_")}
    env.update(FLEETTRACE_DATABASE_URL=db, FLEETTRACE_NAMESPACE=keys.namespace)
    try:
        assert library_loaded(client) is False
        result = fleettrace("migrate", "--redis-url", redis_cluster.url, "--redis-cluster", env=env)
        assert result.returncode == 0, result.stderr
        assert "loaded the batch function library" in result.stdout
        assert library_loaded(client) is True
        emitter = Emitter(
            EmitterSettings(
                redis_url=redis_cluster.url, namespace=keys.namespace, redis_cluster=True
            )
        )
        emitter.record(numbered_trace(1))
        assert emitter.flush(30)
        emitter.close()
        # Gone from one master (a restart without persistence): the worker loads it.
        node = redis_cluster.node(redis_cluster.masters()[-1])
        node.function_delete("fleettrace")
        node.close()
        assert library_loaded(client) is False
        listing = fleettrace(
            "worker", "--burst", "--redis-url", redis_cluster.url, "--redis-cluster", env=env
        )
        assert listing.returncode == 0, listing.stderr
        assert trace_rows(db) == 1
        assert library_loaded(client) is True
        env["FLEETTRACE_REDIS_CLUSTER"] = "true"
        groups = fleettrace("groups", "list", "--json", "--redis-url", redis_cluster.url, env=env)
        assert groups.returncode == 0, groups.stderr
        assert keys.traces in groups.stdout and '"persist"' in groups.stdout
        # The live reads walk the plan hashes on the namespace's master.
        top = fleettrace(
            "metrics", "--top", "3", "--json", "--redis-url", redis_cluster.url, env=env
        )
        assert top.returncode == 0, top.stderr
        assert '"plan-1"' in top.stdout
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.redis_version(7, 0)  # the function library on a cluster
def test_a_killed_master_loses_no_record_the_emitters_were_told_was_sent(
    redis_cluster: LocalCluster,  # noqa: F811
    db: str,
) -> None:
    """Last of the module: it leaves the cluster with a master gone for good."""
    keys = _namespace()
    client = connect_redis(redis_cluster.url, cluster=True)
    master = redis_cluster.master_of(keys.producers)
    replica = redis_cluster.replica_of(master)
    # Auto: the namespace's master has a replica, so each batch and each acknowledging
    # transaction waits for it.
    assert ReplicaWait().replicas is None
    node = slot_client(client, keys.producers)
    assert int(node.info("replication")["connected_slaves"]) == 1
    try:
        with _workers(redis_cluster, db, keys, 2):
            procs = _producers(redis_cluster, keys, 2, 400, 2.0)
            wait_until(lambda: trace_rows(db) > 0, 60, "the first rows")
            redis_cluster.kill(master)
            redis_cluster.wait_for_master(replica)
            lines = _finished(procs)
            assert all(line == "accepted=400 sent=400 dropped=0" for line in lines), lines
            _assert_stored_once_and_counted(client, db, keys, 800)
    finally:
        client.close()
