"""The Overview's health figures over HTTP: the records the emitters dropped (their own
hashes, written by real emitters through the batch script) and the workers' readiness
(their health keys), in /api/overview and on the page, escaped; and a tool name with
markup in the Performance page's tool table."""

from __future__ import annotations

import contextlib
import json
import time

from fleettrace import hooks
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import EMITTER_DROPPED
from tests.dashboard_helpers import HOSTILE, dashboard, get_json, request
from tests.emitting import make_emitter
from tests.factories import numbered_trace
from tests.worker_helpers import drain, migrated


def test_overview_counts_dropped_records_and_says_which_workers_are_ready(
    redis_url, keys, redis_client, database_url
) -> None:
    # A buffer of two records, filled faster than it is sent: the emitter drops records
    # and reports them with its next batch.
    emitter = Emitter(
        EmitterSettings(redis_url=redis_url, namespace=keys.namespace, max_buffer_records=2)
    )
    for i in range(50):
        emitter.record(numbered_trace(i))
    assert emitter.flush(30)
    emitter.record(numbered_trace(50))  # carries any drop counted after the last batch
    assert emitter.flush(30)
    stats = emitter.stats
    emitter.close()
    assert stats.dropped > 0
    # A producer that wrote negative figures into its own hash lowers nothing.
    evil = keys.for_producer("evil")
    redis_client.sadd(keys.producers, "evil")
    redis_client.hset(evil.emitter, mapping={EMITTER_DROPPED: -1000, "records": -5})
    now = time.time()
    for consumer, ready, updated in (
        ("fresh", True, now),
        ("stale", True, now - 120),
        (HOSTILE, False, now),
    ):
        health = {"consumer": consumer, "ready": ready, "updated_at": updated}
        redis_client.set(keys.worker_health(consumer), json.dumps(health), ex=60)
    redis_client.set(keys.worker_health("garbled"), "{not json", ex=60)

    with dashboard(redis_url, keys, database_url) as base:
        status, overview = get_json(f"{base}/api/overview")
        assert status == 200
        stored = int(redis_client.hget(keys.emitter, EMITTER_DROPPED))
        assert overview["dropped"] == stored == stats.dropped
        emitters = {m["producer"]: m for m in overview["emitters"]}
        assert set(emitters) == {keys.producer, "evil"}
        assert (emitters[keys.producer]["records"], emitters[keys.producer]["batches"]) == (
            stats.sent,
            stats.batches,
        )
        assert (emitters["evil"]["dropped"], emitters["evil"]["records"]) == (0, 0)
        workers = {w["consumer"]: (w["ready"], w["said_ready"]) for w in overview["workers"]}
        assert workers == {
            "fresh": (True, True),
            "stale": (False, True),
            HOSTILE: (False, False),
            "garbled": (False, False),
        }

        page = request(f"{base}/")[2].decode()
        assert f'<span id="dropped">{stats.dropped}</span>' in page
        assert "<td>fresh</td><td>yes</td>" in page
        assert "<td>stale</td><td>no</td><td>yes</td>" in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert HOSTILE not in page


def test_a_tool_name_with_markup_is_escaped_in_the_tool_table(
    redis_url, keys, database_url
) -> None:
    db = migrated(database_url)
    emitter = make_emitter(redis_url, keys)
    try:
        for fails in (True, False, False, True):
            with contextlib.suppress(RuntimeError), hooks.tool(HOSTILE, emitter=emitter):
                if fails:
                    raise RuntimeError("broken")
        assert emitter.flush(30)
    finally:
        emitter.close()
    drain(redis_url, keys, db)
    with dashboard(redis_url, keys, db) as base:
        [tool] = get_json(f"{base}/api/performance/tools?range=1h")[1]["items"]
        assert (tool["key"], tool["calls"], tool["errors"], tool["error_rate"]) == (
            HOSTILE,
            4,
            2,
            0.5,
        )
        page = request(f"{base}/performance?range=1h")[2].decode()
        assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td><td>4</td><td>2</td>" in page
        assert HOSTILE not in page
