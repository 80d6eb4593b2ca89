"""The trim rule against the machine's Redis: nothing a group still needs is removed."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest
import redis

from fleettrace.errors import RedisUnavailable
from fleettrace_worker.keys import LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker.stream.consumer import Consumer, GroupState
from fleettrace_worker.stream.groups import (
    GroupLimits,
    GroupReport,
    GroupWatch,
    drop_group,
    inspect_groups,
)
from fleettrace_worker.stream.trim import group_floor, next_entry_id, trim_floors, trim_streams
from tests.factories import add_traces, numbered_trace
from tests.servers import free_port
from tests.tables import read_table


def _ids(client, stream) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(stream)]


def test_next_entry_id() -> None:
    assert next_entry_id("0-0") == "0-1"
    assert next_entry_id("1700000000000-41") == "1700000000000-42"
    assert next_entry_id("5") == "5-1"


def test_floor_is_the_oldest_pending_or_the_entry_after_the_last_delivered() -> None:
    idle = GroupState("s", "g", 0, 0, "10-3", None)
    busy = GroupState("s", "h", 2, 0, "10-3", "7-0")
    assert group_floor(idle) == (10, 4)
    assert group_floor(busy) == (7, 0)
    assert trim_floors([idle, busy, GroupState("t", "g", 0, 0, "0-0", None)]) == {
        "s": "7-0",
        "t": "0-1",
    }


def test_a_stream_without_groups_is_not_trimmed(redis_client, keys) -> None:
    for i in range(3):
        add_traces(redis_client, keys, [numbered_trace(i)])
    assert trim_streams(redis_client, keys, approximate=False) == {}
    assert redis_client.xlen(keys.traces) == 3


def test_trim_keeps_pending_and_undelivered_entries(redis_client, keys) -> None:
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    consumer.ensure_groups()
    ids = [add_traces(redis_client, keys, [numbered_trace(i)]) for i in range(6)]
    first = consumer.read(count=2, block_ms=None)  # ids 0, 1
    second = consumer.read(count=2, block_ms=None)  # ids 2, 3
    consumer.acknowledge(first)
    consumer.acknowledge(second[1:])  # id 2 stays pending, 3 is done
    removed = trim_streams(redis_client, keys, approximate=False)
    assert removed == {keys.traces: 2}  # no metric stream: nobody wrote one
    assert _ids(redis_client, keys.traces) == ids[2:]
    consumer.acknowledge(second[:1])
    trim_streams(redis_client, keys, approximate=False)
    assert _ids(redis_client, keys.traces) == ids[4:]  # 4 and 5 were never delivered


def test_the_slowest_existing_group_sets_the_floor(redis_client, keys) -> None:
    persist = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    persist.ensure_groups()
    ids = [add_traces(redis_client, keys, [numbered_trace(i)]) for i in range(4)]
    persist.acknowledge(persist.read(count=10, block_ms=None))
    # Without a langsmith group, persist alone decides.
    langsmith = Consumer(redis_client, keys, LANGSMITH_GROUP, "c1")
    langsmith.ensure_groups()  # created at 0: it still needs everything
    assert trim_streams(redis_client, keys, approximate=False)[keys.traces] == 0
    langsmith.acknowledge(langsmith.read(count=1, block_ms=None))
    trim_streams(redis_client, keys, approximate=False)
    assert _ids(redis_client, keys.traces) == ids[1:]
    redis_client.xgroup_destroy(keys.traces, LANGSMITH_GROUP)
    trim_streams(redis_client, keys, approximate=False)
    assert _ids(redis_client, keys.traces) == []


def test_approximate_trim_never_removes_more(redis_client, keys) -> None:
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    consumer.ensure_groups()
    ids = [add_traces(redis_client, keys, [numbered_trace(i)]) for i in range(250)]
    consumer.acknowledge(consumer.read(count=150, block_ms=None))
    trim_streams(redis_client, keys)
    remaining = _ids(redis_client, keys.traces)
    assert remaining[-100:] == ids[150:]
    assert remaining == ids[len(ids) - len(remaining) :]


def test_trim_errors_are_unavailable(keys) -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=1)
    with pytest.raises(RedisUnavailable):
        trim_streams(client, keys)


def test_each_producers_stream_is_trimmed_to_its_own_floor(redis_client, keys) -> None:
    bob = keys.for_producer("bob")
    mine = [add_traces(redis_client, keys, [numbered_trace(i)]) for i in range(3)]
    add_traces(redis_client, bob, [numbered_trace(9)])
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    taken = consumer.read(count=10, block_ms=None)
    consumer.acknowledge([e for e in taken if e.stream == keys.traces])  # bob's stays pending
    removed = trim_streams(redis_client, keys, approximate=False)
    assert removed == {keys.traces: 3, bob.traces: 0}
    assert redis_client.xlen(bob.traces) == 1 and mine


def test_groups_report_lag_pending_consumers_and_the_age_of_what_they_need(
    redis_client, keys
) -> None:
    now_ms = int(time.time() * 1000)
    old = now_ms - 7_200_000  # two hours ago
    ids = [redis_client.xadd(keys.traces, {b"x": b"1"}, id=f"{old}-{n}").decode() for n in range(3)]
    redis_client.xadd(keys.metrics, {b"x": b"1"})
    persist = Consumer(redis_client, keys, PERSIST_GROUP, "w1")
    persist.ensure_groups()
    # Forwarding was on once: the group exists, nobody reads it any more.
    Consumer(redis_client, keys, LANGSMITH_GROUP, "gone").ensure_groups()
    everything = persist.read(count=10, block_ms=None)
    taken = [e for e in everything if e.stream == keys.traces]
    persist.acknowledge([e for e in everything if e.stream == keys.metrics])
    persist.acknowledge(taken[:2])  # the third stays pending
    reports = {
        (r.stream, r.group): r for r in inspect_groups(redis_client, keys, now_s=now_ms / 1000)
    }
    mine = reports[(keys.traces, PERSIST_GROUP)]
    assert (mine.lag, mine.pending, mine.oldest_needed_id) == (0, 1, ids[2])
    assert [(c.name, c.pending) for c in mine.consumers] == [("w1", 1)]
    assert mine.idle_s is not None and mine.idle_s < 60
    assert mine.age_s == pytest.approx(7200, abs=1)
    abandoned = reports[(keys.traces, LANGSMITH_GROUP)]
    assert (abandoned.lag, abandoned.pending, abandoned.consumers) == (3, 0, ())
    assert abandoned.idle_s is None
    assert abandoned.oldest_needed_id == ids[0]
    assert abandoned.behind(GroupLimits(max_lag=2, max_age_s=0))
    assert abandoned.behind(GroupLimits(max_lag=0, max_age_s=3600))
    assert not abandoned.behind(GroupLimits(max_lag=3, max_age_s=7300))
    caught_up = reports[(keys.metrics, PERSIST_GROUP)]
    assert (caught_up.lag, caught_up.oldest_needed_id, caught_up.age_s) == (0, None, 0.0)

    # Dropped, the abandoned group no longer holds the floor: only the pending entry stays.
    persist.acknowledge(taken[2:])
    assert sorted(drop_group(redis_client, keys, LANGSMITH_GROUP)) == sorted(keys.streams)
    assert drop_group(redis_client, keys, LANGSMITH_GROUP) == []
    trim_streams(redis_client, keys, approximate=False)
    assert redis_client.xlen(keys.traces) == 0


def test_a_group_behind_is_warned_about_once_per_interval(caplog) -> None:
    behind = GroupReport("{ns}:traces", "langsmith", 500, 0, (), "0-0", "1-0", 9_000.0)
    fine = GroupReport("{ns}:traces", "persist", 0, 0, (), "5-0", None, 0.0)
    now = [0.0]
    watch = GroupWatch(
        GroupLimits(max_lag=100, max_age_s=3600), interval_s=300, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="fleettrace_worker.stream.groups"):
        assert watch.check([behind, fine]) == [behind]
        now[0] = 299.0
        assert watch.check([behind, fine]) == [behind]
        now[0] = 300.0
        watch.check([behind])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("consumer group langsmith on {ns}:traces is behind: lag 500")
    assert "has no consumer" in lines[0]
    assert "fleettrace groups drop langsmith" in lines[0]


def test_the_groups_command_lists_with_the_workers_limits_and_drops(
    redis_url, redis_client, keys, monkeypatch, capsys
) -> None:
    from fleettrace_worker.cli import main

    common = ["--redis-url", redis_url, "--namespace", keys.namespace]
    assert main(["groups", "list", *common]) == 0
    assert capsys.readouterr().out == f"no consumer groups in namespace {keys.namespace!r}\n"
    for i in range(3):
        add_traces(redis_client, keys, [numbered_trace(i)])
    Consumer(redis_client, keys, LANGSMITH_GROUP, "gone").ensure_groups()
    monkeypatch.setenv("FLEETTRACE_WORKER_GROUP_MAX_LAG", "2")
    assert main(["groups", "list", *common]) == 0
    header, rows, footer = read_table(capsys.readouterr().out)
    assert header == [
        "STREAM", "GROUP", "LAG (entries)", "PENDING (entries)", "CONSUMERS", "IDLE (s)",
        "OLDEST NEEDED (s old)", "BEHIND",
    ]  # fmt: skip
    row = next(row for row in rows if row[0] == keys.traces)
    assert row[1:6] == [LANGSMITH_GROUP, "3", "0", "0", "-"]
    assert row[-1] == "yes"
    assert footer == ["1 consumer group on 1 stream; 1 behind"]
    assert main(["groups", "list", "--json", "--max-lag", "5", *common]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["next_cursor"] is None
    traces = next(r for r in listing["items"] if r["stream"] == keys.traces)
    assert (traces["lag"], traces["behind"], traces["consumers"]) == (3, False, [])
    assert main(["groups", "drop", "nope", "--yes", *common]) == 1
    assert "no consumer group 'nope'" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["groups", "drop", LANGSMITH_GROUP, *common]) == 1
    assert "nothing dropped" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["groups", "drop", LANGSMITH_GROUP, *common]) == 0
    assert redis_client.xinfo_groups(keys.traces) == []
