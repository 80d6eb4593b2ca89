"""Sharded namespaces on one Redis (docs/scaling.md#sharded-namespaces): the key layout
of each shard (shard 0 is the unsharded layout, byte for byte), the rule an emitter
process picks its shard by, its settings, a worker that finds and reads every shard
(or those it is told), and live reads that sum the shards. The same on a real
cluster is tests/test_shards_cluster.py."""

from __future__ import annotations

import json
import logging
import threading
import zlib
from dataclasses import replace

import pytest
import redis
from redis.cluster import key_slot

from fleettrace.emitter import EmitterSettings
from fleettrace.errors import ConfigurationError
from fleettrace.keys import MAX_SHARDS, Keys
from fleettrace.live import is_over_budget, plan_cost_usd, read_live
from fleettrace.metrics import MetricKey
from fleettrace.plans import count_plans, read_plan, top_plans, total_cost_usd
from fleettrace.shards import choose_shard, configured_shards, known_shards, parse_shard
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.process import Worker
from fleettrace_worker.serve.dashboard.access import CSRF_COOKIE
from fleettrace_worker.serve.dashboard.queries import overview
from fleettrace_worker.stream.shards import ShardWalk, discover_shards, shard_of
from tests.dashboard_helpers import dashboard, get_json, page_cells, request
from tests.emitting import make_emitter
from tests.factories import numbered_trace
from tests.servers import free_port
from tests.waiting import wait_until
from tests.worker_helpers import (
    drain,
    fleettrace_here,
    http_get,
    migrated,
    scalar,
    serving_worker,
    trace_rows,
    worker_env,
)


def test_shard_0_is_the_unsharded_layout_and_each_shard_has_a_slot_of_its_own() -> None:
    today = Keys("fleet", "agent-1")
    assert today.shard == 0 and today.for_shard(0) == today
    assert (today.prefix, today.traces) == ("{fleet}", "{fleet}:p:agent-1:traces")
    two = today.for_shard(2)
    assert two.prefix == "{fleet:2}"
    assert two.traces == "{fleet:2}:p:agent-1:traces"
    assert two.for_producer("agent-2").dead_letters("persist") == "{fleet:2}:dlq:persist"
    assert two.for_producer("agent-2").shard == 2
    assert two.shard_registry == today.shard_registry == "{fleet}:shards"
    named = [two.traces, two.metrics, two.dirty, two.live("llm.cost"), two.plan("p-1")]
    named += [two.producers, two.aggregate_fresh, two.aggregate_plan("p-1"), two.emitter]
    assert {key_slot(k.encode()) for k in named} == {key_slot(b"{fleet:2}")}
    assert key_slot(two.traces.encode()) != key_slot(today.traces.encode())
    with pytest.raises(ValueError, match="shard must be"):
        Keys("fleet", shard=MAX_SHARDS)


def test_an_emitter_process_picks_its_shard_by_the_documented_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert choose_shard(1) == 0
    assert choose_shard(3, host="web-1", pid=4242) == zlib.crc32(b"web-1:4242") % 3
    assert choose_shard(3, 2, host="web-1", pid=4242) == 2  # FLEETTRACE_SHARD wins
    spread = {choose_shard(3, host="web-1", pid=pid) for pid in range(100, 130)}
    assert spread == {0, 1, 2}
    monkeypatch.setenv("FLEETTRACE_SHARDS", "3")
    monkeypatch.setenv("FLEETTRACE_SHARD", "1")
    settings = EmitterSettings.from_env()
    assert (settings.shards, settings.shard, settings.chosen_shard()) == (3, 1, 1)
    monkeypatch.delenv("FLEETTRACE_SHARD")
    settings = EmitterSettings.from_env()
    assert settings.chosen_shard() == choose_shard(3)
    assert configured_shards() == 3
    monkeypatch.setenv("FLEETTRACE_SHARDS", "0")
    with pytest.raises(ConfigurationError, match="FLEETTRACE_SHARDS must be a whole number"):
        EmitterSettings.from_env()
    with pytest.raises(ConfigurationError, match="FLEETTRACE_SHARDS must be a whole number"):
        configured_shards()
    with pytest.raises(ConfigurationError, match="shard must be a whole number"):
        EmitterSettings(shard=-1)
    with pytest.raises(ValueError, match="FLEETTRACE_SHARD must"):
        parse_shard("one")


def test_the_worker_settings_take_a_list_of_shards() -> None:
    with pytest.raises(ConfigurationError, match="shards must be shard numbers"):
        WorkerSettings("redis://x", "postgresql://x", shards=())


def _emit(redis_url: str, keys: Keys, shard: int, first: int, count: int) -> None:
    emitter = make_emitter(redis_url, keys, shards=3, shard=shard)
    for i in range(first, first + count):
        emitter.record(numbered_trace(i))
    assert emitter.flush(30)
    emitter.close()


def test_the_walk_finds_each_shard_with_a_stream_and_records_it(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    assert discover_shards(redis_client, keys) == [0]
    _emit(redis_url, keys, 2, 0, 5)
    assert redis_client.xlen(keys.for_shard(2).traces) == 1  # one batch, one entry
    assert not redis_client.exists(keys.traces)
    redis_client.set("{" + keys.namespace + ":1}:p:x:other", "not a stream")
    walk = ShardWalk(redis_client, keys, count=2)
    while not walk.advance(steps=1):
        pass
    assert walk.found == {0, 2}
    assert redis_client.smembers(keys.shard_registry) == {b"2"}
    assert known_shards(redis_client, keys) == [0, 2]
    assert shard_of(keys, keys.for_shard(7).metrics) == 7
    for name in (keys.traces, "{" + keys.namespace + ":01}:p:a:traces", "{other:1}:p:a:traces"):
        assert shard_of(keys, name) is None
    assert shard_of(keys, "{" + keys.namespace + ":2}:p:a:plan:x") is None


def test_live_reads_sum_the_shards_before_and_after_a_worker_aggregates_them(
    redis_url: str, redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    db = migrated(database_url)
    for shard in range(3):
        _emit(redis_url, keys, shard, shard * 70, 70)
    one_shard = plan_cost_usd(redis_client, keys, "plan-1")
    assert one_shard > 0
    redis_client.sadd(keys.shard_registry, 1, 2, "junk")
    expected = sum(numbered_trace_cost(redis_client, keys.for_shard(s)) for s in range(3))
    assert plan_cost_usd(redis_client, keys, "plan-1") == pytest.approx(expected)
    assert plan_cost_usd(redis_client, keys, "plan-1") == pytest.approx(3 * one_shard, rel=0.2)
    # The worker reads every shard, stores each record once, and aggregates each shard.
    with serving_worker(redis_url, db, keys) as (_, base):
        wait_until(lambda: trace_rows(db) >= 210, 30, "every row")
        fresh = [keys.for_shard(s).aggregate_fresh for s in range(3)]
        wait_until(lambda: redis_client.exists(*fresh) == 3, 30, "each shard's aggregates")
        assert plan_cost_usd(redis_client, keys, "plan-1") == pytest.approx(expected)
        status, metrics = http_get(f"{base}/metrics")
        assert status == 200
        labels = 'model="gpt-4o",provider="openai",token_type="prompt"'
        line = "fleettrace_actor_token_usage_total{" + labels + "}"
        exported = [row.split()[-1] for row in metrics.splitlines() if row.startswith(line)]
        prompt_sum = scalar(db, "SELECT sum(prompt_tokens) FROM llm_traces")
        assert [float(value) for value in exported] == [prompt_sum]
    assert trace_rows(db) == 210
    stored = scalar(db, "SELECT count(*) FROM llm_traces WHERE plan_id = 'plan-1'")
    figures = read_plan(redis_client, keys, "plan-1")
    assert figures is not None and figures.priced_calls == stored == 30
    assert is_over_budget(redis_client, keys, "plan-1", expected * 0.99)
    assert not is_over_budget(redis_client, keys, "plan-1", expected * 1.01)
    top = top_plans(redis_client, keys, 2)
    assert [p.plan_id for p in top.plans] == sorted(
        (f"plan-{i}" for i in range(7)),
        key=lambda p: (-plan_cost_usd(redis_client, keys, p), p),
    )[:2]
    assert count_plans(redis_client, keys) == (7, True)
    total = sum(plan_cost_usd(redis_client, keys, f"plan-{i}") for i in range(7))
    assert total_cost_usd(redis_client, keys) == pytest.approx(total)
    tokens = read_live(redis_client, keys, MetricKey.ACTOR_TOKEN_USAGE)
    prompt = [s for s in tokens if ("token_type", "prompt") in s.labels]
    assert sum(s.sum for s in prompt) == scalar(db, "SELECT sum(prompt_tokens) FROM llm_traces")


def numbered_trace_cost(client: redis.Redis, keys: Keys) -> float:
    """plan-1's cost as shard ``keys.shard`` counted it (its producer's hash alone)."""
    raw = client.hget(keys.plan("plan-1"), "plan.cost_usd||sum")
    return float(raw or 0)


def test_a_worker_told_its_shards_reads_only_those(
    redis_url: str, redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    db = migrated(database_url)
    for shard in range(3):
        _emit(redis_url, keys, shard, shard * 10, 10)
    drain(redis_url, keys, db, shards=(1,))
    assert trace_rows(db) == 10
    assert redis_client.smembers(keys.shard_registry) == {b"1"}  # readers sum it
    shard_1 = "SELECT count(*) FROM llm_traces WHERE substr(decision_id, 3)::int BETWEEN 10 AND 19"
    assert scalar(db, shard_1) == 10
    assert redis_client.xlen(keys.traces) == 1  # shard 0 left alone
    drain(redis_url, keys, db, shards=(0, 2))
    assert trace_rows(db) == 30


def test_the_commands_and_the_overview_see_every_shard(  # noqa: PLR0917
    redis_url: str,
    redis_client: redis.Redis,
    keys: Keys,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = migrated(database_url)
    _emit(redis_url, keys, 0, 0, 4)
    _emit(redis_url, keys, 2, 10, 6)
    redis_client.xadd(keys.for_shard(2).traces, {"junk": "1"})  # a dead letter in shard 2
    drain(redis_url, keys, db)
    assert trace_rows(db) == 10
    env = worker_env(redis_url, db, keys)
    listed = fleettrace_here(
        "groups", "list", "--json", env=env, monkeypatch=monkeypatch, capsys=capsys
    )
    streams = {item["stream"] for item in json.loads(listed.stdout)["items"]}
    assert streams == {keys.traces, keys.for_shard(2).traces}
    dead = [
        json.loads(
            fleettrace_here(
                "dlq", "list", "--json", *shard, env=env, monkeypatch=monkeypatch, capsys=capsys
            ).stdout
        )["items"]
        for shard in ((), ("--shard", "2"))
    ]
    assert dead[0] == [] and [item["stream"] for item in dead[1]] == [keys.for_shard(2).traces]
    board = overview(redis_client, keys)
    assert board["dead_letters"]["persist"] == 1
    assert {g["stream"] for g in board["groups"]} == streams
    assert [(e["producer"], e["records"]) for e in board["emitters"]] == [("default", 10)]


def test_a_worker_that_cannot_reach_redis_starts_with_shard_0_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    away = f"redis://127.0.0.1:{free_port()}/0"
    settings = WorkerSettings(
        away, "postgresql://x", namespace="away", health_interval_s=0.1, retry_max_s=0.2
    )
    worker = Worker(settings)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()))
    with caplog.at_level(logging.DEBUG, logger="fleettrace_worker.process"):
        thread.start()
        try:
            wait_until(
                lambda: any(
                    r.getMessage().startswith("shards not looked for: ") for r in caplog.records
                ),
                20,
                "a walk tried again at a health tick",
            )
        finally:
            worker.stop.set()
            thread.join(30)
    assert result == [0]
    assert worker.shards == [0]  # shard 0's loops ran, waiting for Redis
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("shards not looked for at start: ") for m in messages), messages
    told = Worker(replace(settings, shards=(0, 3)))
    with caplog.at_level(logging.WARNING, logger="fleettrace_worker.process"):
        assert told._first_shards() == [0, 3]
    told.context.close()
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("shards not recorded for the readers: ") for m in messages), messages


def test_only_a_producer_stream_of_a_shard_number_names_a_shard() -> None:
    keys = Keys("fleet")
    for shard in ("0", str(MAX_SHARDS), "x"):
        assert shard_of(keys, "{fleet:" + shard + "}:p:a:traces") is None
    assert shard_of(keys, "{fleet:3}:p:a:traces") == 3


def test_the_dashboard_lists_and_replays_each_shards_dead_letters(
    redis_url: str, redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    db = migrated(database_url)
    _emit(redis_url, keys, 2, 0, 3)
    junk = redis_client.xadd(keys.for_shard(2).traces, {"junk": "1"}).decode()
    drain(redis_url, keys, db)
    [letter_id] = [
        i.decode() for i, _ in redis_client.xrange(keys.for_shard(2).dead_letters("persist"))
    ]
    with dashboard(redis_url, keys, db) as base:
        assert get_json(f"{base}/api/dlq?group=persist")[1]["items"] == []
        [letter] = get_json(f"{base}/api/dlq?group=persist&shard=2")[1]["items"]
        assert (letter["id"], letter["shard"], letter["entry_id"]) == (letter_id, 2, junk)
        assert letter["stream"] == keys.for_shard(2).traces
        status, answer = get_json(f"{base}/api/dlq?shard=x")
        assert status == 400 and "shard" in answer["error"]
        # The page: shard 0's sections as before, then shard 2's, each with its own form.
        page = request(f"{base}/dlq")[2].decode()
        assert page_cells(page, "dlq-persist") == [[]]  # the row that says "nothing yet"
        assert "nothing yet" in page.split('id="dlq-persist"')[1].split("</table>")[0]
        [row] = page_cells(page, "dlq-persist-2")
        assert letter_id in row and keys.for_shard(2).traces in row
        assert '<input type="hidden" name="shard" value="2">' in page
        # Replay goes to the shard asked: not found in shard 0, refused (no record) in 2.
        csrf = {"Cookie": f"{CSRF_COOKIE}={'c' * 32}", "X-CSRF-Token": "c" * 32}
        body = json.dumps({"ids": [letter_id]}).encode()
        url = f"{base}/api/dlq/persist/replay"
        assert get_json(url, data=body, headers=csrf)[1]["missing"] == [letter_id]
        report = get_json(f"{url}?shard=2", data=body, headers=csrf)[1]
        assert [r["id"] for r in report["refused"]] == [letter_id] and report["missing"] == []
