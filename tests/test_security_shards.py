"""The ACL patterns docs/security.md gives for sharded namespaces, made into users of a
private Redis 7: an agent writing to shard 2 of 3 with its exact per-shard patterns,
a budget reader with the per-shard read patterns, and the worker with its added
pattern. Each can do what the page says and nothing of another producer's."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
import redis

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys
from fleettrace.live import plan_cost_usd, read_live
from fleettrace.metrics import MetricKey
from tests.acl import AGENT, BUDGET_AGENT, SECURITY_DOC, WORKER, create_user
from tests.factories import llm_trace
from tests.servers import PrivateRedis
from tests.worker_helpers import drain, migrated, trace_rows

NS = "acl-shards"


def _sharded_patterns() -> tuple[list[str], list[str], str]:
    """From the page's paragraph on sharded namespaces: the agent's write patterns for
    3 shards, the budget line's read patterns of shard 1, the worker's added pattern."""
    text = SECURITY_DOC.read_text()
    part = text.split("**Sharded namespaces**", 1)[1].split("\n\n", 1)[0]
    spans = re.findall(r"`([^`]+)`", part)
    writes = next(s for s in spans if s.startswith("~{fleettrace}:p:")).split()
    reads = [s for s in spans if s.startswith("%R~{fleettrace:1}")]
    worker = part.split("The worker's line adds", 1)[1].split("`")[1]
    return writes, reads, worker


def _grant(admin: redis.Redis, user: str, patterns: list[str], keys: Keys) -> None:
    ns = keys.namespace
    admin.execute_command(
        "ACL",
        "SETUSER",
        user,
        *(p.replace("{fleettrace", "{" + ns).replace(f":{AGENT}:", f":{user}:") for p in patterns),
    )


def test_the_documented_shard_patterns_let_each_user_do_its_part_only(
    private_redis: PrivateRedis, database_url: str
) -> None:
    writes, reads, worker_pattern = _sharded_patterns()
    assert len(writes) == 3 and len(reads) == 6
    admin = redis.Redis.from_url(private_redis.url)
    keys = Keys(NS)
    urls = {
        user: create_user(admin, template, keys, user, uuid.uuid4().hex)
        for user, template in (("alice", AGENT), ("carol", BUDGET_AGENT), ("worker", WORKER))
    }
    _grant(admin, "alice", writes, keys)
    _grant(admin, "carol", [*reads, *(r.replace(":1}", ":2}") for r in reads)], keys)
    _grant(admin, "worker", [worker_pattern], keys)

    settings = EmitterSettings(
        redis_url=urls["alice"], namespace=NS, shards=3, shard=2, retry_initial_s=0.01
    )
    with Emitter(settings) as emitter:
        for i in range(12):
            emitter.record(llm_trace(plan_id="trip", prompt_tokens=i + 1, cost_usd=0.5))
        assert emitter.flush(10)
        assert emitter.stats.send_failures == 0
    alice = keys.for_shard(2).for_producer("alice")
    assert admin.xlen(alice.traces) >= 1
    agent = redis.Redis.from_url(urls["alice"])
    try:
        # Another producer's keys in the shards alice may write to, and another shard.
        for key in (
            keys.for_shard(2).for_producer("bob").traces,
            keys.for_shard(1).for_producer("bob").live("x"),
            keys.for_shard(3).for_producer("alice").traces,
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                agent.xadd(key, {"v": "1"})
    finally:
        agent.close()

    db = migrated(database_url)
    drain(urls["worker"], keys, db)
    assert trace_rows(db) == 12
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT sum(cost_usd), sum(prompt_tokens) FROM llm_traces").fetchone()
    assert row is not None
    reader = redis.Redis.from_url(urls["carol"])
    try:
        assert plan_cost_usd(reader, keys, "trip") == pytest.approx(float(row[0]))
        tokens = read_live(reader, keys, MetricKey.ACTOR_TOKEN_USAGE)
        assert sum(s.sum for s in tokens if ("token_type", "prompt") in s.labels) == row[1]
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.xrange(alice.traces)  # a budget reader reads no stream
    finally:
        reader.close()
        admin.close()
