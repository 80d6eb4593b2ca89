"""Sharded namespaces on a real Redis Cluster (three masters, three replicas,
tests/cluster.py): emitter processes with ``FLEETTRACE_SHARDS=3`` spread a namespace
over the masters, one worker stores every record once from every shard, the live
reads (plan costs, budgets, the fleet's series, ``fleettrace metrics --json``) equal
the sums of the stored rows, changing the number of shards under load loses nothing,
and a worker told ``--shards`` reads only those. docs/scaling.md#sharded-namespaces."""

from __future__ import annotations

import json
import math
import os
import time

import orjson
import pytest
import redis

from fleettrace.connection import connect_redis
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys
from fleettrace.live import is_over_budget, read_live
from fleettrace.metrics import MetricKey
from fleettrace_worker.serve.history import Totals, windows
from fleettrace_worker.stream.shards import discover_shards, shard_of
from tests.cluster import LocalCluster, redis_cluster  # noqa: F401 (the fixture)
from tests.factories import numbered_trace
from tests.test_cluster import (
    PLANS,
    _assert_stored_once_and_counted,
    _finished,
    _namespace,
    _producers,
    _sql_plan_costs,
    _workers,
)
from tests.waiting import wait_until
from tests.worker_helpers import fleettrace, migrated, scalar, trace_rows

SHARDS = 3


@pytest.fixture
def db(database_url: str) -> str:
    return migrated(database_url)


def _spread_namespace(cluster: LocalCluster) -> Keys:
    """A fresh namespace whose three shards sit on three different masters (which
    master a tag lands on is the luck of its hash; one in about 4.5 namespaces)."""
    while True:
        keys = _namespace()
        masters = {cluster.master_of(keys.for_shard(s).producers) for s in range(SHARDS)}
        if len(masters) == SHARDS:
            return keys


def _shard_env(shard: int | None = None) -> dict[str, str]:
    env = {"FLEETTRACE_SHARDS": str(SHARDS)}
    if shard is not None:
        env["FLEETTRACE_SHARD"] = str(shard)
    return env


def _stream_masters(cluster: LocalCluster, keys: Keys) -> dict[int, set[int]]:
    """Per shard that has a producer stream, the masters its streams are on."""
    found: dict[int, set[int]] = {}
    for port in cluster.masters():
        node = cluster.node(port)
        try:
            for match in (f"{keys.prefix}:p:*", "{" + keys.namespace + ":*}:p:*"):
                for raw in node.scan_iter(match=match, _type="stream", count=1000):
                    name = raw.decode()
                    shard = 0 if name.startswith(keys.prefix) else shard_of(keys, name)
                    assert shard is not None, name
                    found.setdefault(shard, set()).add(port)
        finally:
            node.close()
    return found


def _assert_live_reads_equal_the_rows(
    cluster: LocalCluster, client: redis.Redis, db: str, keys: Keys
) -> None:
    """The fleet's token series, the budgets and ``fleettrace metrics --top --json``
    (another process, on the cluster) equal the stored rows' sums."""
    prompt = sum(
        series.sum
        for series in read_live(client, keys, MetricKey.ACTOR_TOKEN_USAGE)
        if ("token_type", "prompt") in series.labels
    )
    assert prompt == scalar(db, "SELECT sum(prompt_tokens) FROM llm_traces")
    stored = _sql_plan_costs(db)
    for plan in PLANS:
        assert is_over_budget(client, keys, plan, stored[plan] * 0.999)
        assert not is_over_budget(client, keys, plan, stored[plan] * 1.001)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETTRACE_")}
    env.update(FLEETTRACE_NAMESPACE=keys.namespace, FLEETTRACE_REDIS_CLUSTER="true")
    top = fleettrace(
        "metrics", "--top", str(len(PLANS)), "--json", "--redis-url", cluster.url, env=env
    )
    assert top.returncode == 0, top.stderr
    shown = {item["plan"]: item["cost_usd"] for item in json.loads(top.stdout)["items"]}
    assert set(shown) == set(stored)
    assert all(math.isclose(shown[p], stored[p], rel_tol=1e-9) for p in PLANS), (shown, stored)


def _assert_history_of_each_shard(client: redis.Redis, keys: Keys) -> None:
    """Each shard's aggregator (on its master) keeps the shard's history; a window over
    the cluster is the live totals less the shards' oldest samples."""
    oldest = [client.zrange(keys.for_shard(s).aggregate_history, 0, 0) for s in range(SHARDS)]
    assert all(oldest), "a shard without history"
    current = Totals.of(read_live(client, keys))
    assert current.calls == 1200
    [day] = windows(client, keys, current, [("24h", time.time() - 86400)])
    assert day.figures is not None and not day.complete
    assert day.figures.calls == 1200 - sum(orjson.loads(o[0])["calls"] for o in oldest)


@pytest.mark.slow
@pytest.mark.redis_version(7, 0)  # the function library on a cluster
def test_sharded_emitters_spread_over_the_masters_and_one_worker_stores_each_record_once(
    redis_cluster: LocalCluster,  # noqa: F811
    db: str,
) -> None:
    keys = _spread_namespace(redis_cluster)
    client = connect_redis(redis_cluster.url, cluster=True)
    # Three processes told their shard, one that picks it by the rule (host, pid).
    envs = [_shard_env(0), _shard_env(1), _shard_env(2), _shard_env()]
    try:
        with _workers(redis_cluster, db, keys, 1):
            procs = _producers(redis_cluster, keys, 4, 300, 1.0, env_each=envs)
            lines = _finished(procs)
            assert all(line == "accepted=300 sent=300 dropped=0" for line in lines), lines
            _assert_stored_once_and_counted(client, db, keys, 1200)
            _assert_live_reads_equal_the_rows(redis_cluster, client, db, keys)
            _assert_history_of_each_shard(client, keys)
        on = _stream_masters(redis_cluster, keys)
        assert set(on) == {0, 1, 2}
        assert len(set().union(*on.values())) >= 2  # one fleet's load on several masters
        assert discover_shards(client, keys) == [0, 1, 2]
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.redis_version(7, 0)  # the function library on a cluster
def test_changing_the_number_of_shards_under_load_loses_nothing(
    redis_cluster: LocalCluster,  # noqa: F811
    db: str,
) -> None:
    """The documented procedure: the worker runs on; emitters of the old setting (one
    shard) go on sending while emitters started with the new one (three) begin."""
    keys = _spread_namespace(redis_cluster)
    client = connect_redis(redis_cluster.url, cluster=True)
    try:
        with _workers(redis_cluster, db, keys, 1) as (worker,):
            before = _producers(redis_cluster, keys, 2, 400, 3.0)
            wait_until(lambda: trace_rows(db) > 0, 60, "the first rows")
            after = _producers(
                redis_cluster,
                keys,
                3,
                400,
                1.5,
                first=800,
                env_each=[_shard_env(s) for s in range(SHARDS)],
            )
            lines = _finished(before) + _finished(after)
            assert all(line == "accepted=400 sent=400 dropped=0" for line in lines), lines
            _assert_stored_once_and_counted(client, db, keys, 2000)
            _assert_live_reads_equal_the_rows(redis_cluster, client, db, keys)
            assert worker.shards == [0, 1, 2]  # found while running
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.redis_version(7, 0)  # the function library on a cluster
def test_a_worker_told_its_shards_reads_only_those_on_the_cluster(
    redis_cluster: LocalCluster,  # noqa: F811
    db: str,
) -> None:
    keys = _namespace()
    for shard in range(SHARDS):
        emitter = Emitter(
            EmitterSettings(
                redis_url=redis_cluster.url,
                namespace=keys.namespace,
                redis_cluster=True,
                shards=SHARDS,
                shard=shard,
            )
        )
        for i in range(shard * 100, shard * 100 + 10 * (shard + 1)):
            emitter.record(numbered_trace(i))
        assert emitter.flush(30)
        emitter.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETTRACE_")}
    env.update(FLEETTRACE_DATABASE_URL=db, FLEETTRACE_NAMESPACE=keys.namespace)
    args = ("worker", "--burst", "--redis-url", redis_cluster.url, "--redis-cluster")
    result = fleettrace(*args, "--shards", "1", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert trace_rows(db) == 20 + 30  # shards 1 and 2, not shard 0's 10
    result = fleettrace(*args, "--shards", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert trace_rows(db) == 60
