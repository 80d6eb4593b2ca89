"""How the Redis Cluster settings are read and refused, and what waiting for replicas
does on a single Redis (the machine's, which has none). The cluster itself:
tests/test_cluster.py."""

from __future__ import annotations

import pytest
import redis

from fleettrace.cluster import ReplicasBehind, ReplicatedWrites, slot_scan
from fleettrace.cluster_settings import ReplicaWait, cluster_from_env
from fleettrace.connection import connect_redis
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace_worker.context import WorkerSettings
from tests.factories import numbered_trace
from tests.servers import free_port
from tests.waiting import wait_until
from tests.worker_helpers import fleettrace, worker_env


@pytest.mark.parametrize(
    ("text", "wanted"), [("true", True), (" YES ", True), ("1", True), ("off", False), ("", False)]
)
def test_the_cluster_variable_reads_true_or_false(text: str, wanted: bool) -> None:
    assert cluster_from_env({"FLEETTRACE_REDIS_CLUSTER": text}) is wanted


def test_a_bad_setting_is_one_line_naming_its_variable() -> None:
    with pytest.raises(ConfigurationError, match="FLEETTRACE_REDIS_CLUSTER must be true or false"):
        cluster_from_env({"FLEETTRACE_REDIS_CLUSTER": "maybe"})
    with pytest.raises(ConfigurationError, match="FLEETTRACE_REDIS_WAIT_REPLICAS must be auto"):
        ReplicaWait.from_env({"FLEETTRACE_REDIS_WAIT_REPLICAS": "two"})
    with pytest.raises(ConfigurationError, match="FLEETTRACE_REDIS_WAIT_TIMEOUT_MS must be"):
        ReplicaWait.from_env({"FLEETTRACE_REDIS_WAIT_TIMEOUT_MS": "soon"})
    with pytest.raises(ConfigurationError, match="wait replicas"):
        EmitterSettings(wait_replicas=-1)
    with pytest.raises(ConfigurationError, match="wait timeout"):
        WorkerSettings("redis://x", "postgresql://x", wait_timeout_ms=0)
    with pytest.raises(ConfigurationError, match="a Redis Cluster is reached over redis://"):
        connect_redis("unix:///tmp/redis.sock", cluster=True)


def test_both_sides_read_the_same_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "FLEETTRACE_REDIS_CLUSTER": "true",
        "FLEETTRACE_REDIS_WAIT_REPLICAS": "0",
        "FLEETTRACE_REDIS_WAIT_TIMEOUT_MS": "250",
    }
    worker = WorkerSettings.from_env("redis://h:7000/0", "postgresql://x", environ=env)
    assert (worker.redis_cluster, worker.replica_wait()) == (True, ReplicaWait(0, 250))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    emitter = EmitterSettings.from_env()
    assert (emitter.redis_cluster, emitter.replica_wait()) == (True, ReplicaWait(0, 250))
    # Auto by default; a given value wins over the environment.
    monkeypatch.delenv("FLEETTRACE_REDIS_WAIT_REPLICAS")
    assert EmitterSettings.from_env(redis_cluster=False).redis_cluster is False
    assert EmitterSettings.from_env().wait_replicas is None


@pytest.mark.slow  # two CLI processes
def test_the_cli_refuses_a_bad_cluster_variable_in_one_line(
    redis_url: str, keys: Keys, database_url: str
) -> None:
    env = {**worker_env(redis_url, database_url, keys), "FLEETTRACE_REDIS_CLUSTER": "maybe"}
    result = fleettrace("groups", "list", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fleettrace groups: FLEETTRACE_REDIS_CLUSTER must be true or false, got 'maybe'"
    ]
    result = fleettrace("demo", "--redis-cluster", env=worker_env(redis_url, database_url, keys))
    assert result.returncode == 2
    assert "not on a Redis Cluster" in result.stderr
    assert "Traceback" not in result.stderr


def test_on_a_single_redis_auto_waits_for_nothing_and_a_number_is_waited_for(
    redis_client: redis.Redis, keys: Keys
) -> None:
    auto = ReplicatedWrites(redis_client, keys.producers, ReplicaWait())
    assert auto.wanted() == 0  # as before: no WAIT on a single Redis unless asked
    assert auto.write(lambda c: c.sadd(keys.producers, "a")) == [1]
    one = ReplicatedWrites(redis_client, keys.producers, ReplicaWait(1, 10))
    # The machine's Redis has no replica: the write stands, the wait falls short.
    with pytest.raises(ReplicasBehind, match="0 of 1 replicas acknowledged the write within 10 ms"):
        one.write(lambda c: c.sadd(keys.producers, "b"))
    assert redis_client.sismember(keys.producers, "b")
    # Not strict (the worker's acknowledgements): logged, and the replies returned.
    assert one.write(lambda c: c.sadd(keys.producers, "c"), transaction=True, strict=False) == [
        b"OK",
        b"QUEUED",
        [1],
    ]
    assert one.unconfirmed == 1
    # An error inside the transaction is raised, as a transaction pipeline raises it.
    redis_client.set(keys.emitter, "not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        one.write(lambda c: c.hset(keys.emitter, "f", "1"), transaction=True, strict=False)
    # A single Redis is scanned as it is.
    cursor, found = slot_scan(redis_client, keys.producers, 0, match=keys.producers, count=1000)
    while cursor:
        cursor, more = slot_scan(redis_client, keys.producers, cursor, match=keys.producers)
        found += more
    assert found == [keys.producers.encode()]


@pytest.mark.slow  # a CLI process
def test_an_unreachable_cluster_is_a_failed_send_and_a_one_line_error(
    redis_url: str, keys: Keys, database_url: str
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    # Made while the cluster is away: nothing raises into agent code.
    emitter = Emitter(
        EmitterSettings(
            redis_url=nowhere,
            namespace=keys.namespace,
            redis_cluster=True,
            flush_interval_s=0.01,
            retry_initial_s=0.01,
            retry_max_s=0.05,
        )
    )
    try:
        emitter.record(numbered_trace(1))
        wait_until(lambda: emitter.stats.send_failures >= 2, 30, "two failed sends")
        stats = emitter.stats
        assert (stats.sent, stats.buffered) == (0, 1)
        assert str(stats.last_error).startswith("ConnectionError: Redis Cluster not reachable")
    finally:
        assert emitter.close(0.1) is False
    env = worker_env(redis_url, database_url, keys)
    result = fleettrace("groups", "list", "--redis-cluster", "--redis-url", nowhere, env=env)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Redis Cluster not reachable" in result.stderr
    assert "Traceback" not in result.stderr
