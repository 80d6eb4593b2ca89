"""The trim rule against the machine's Redis: nothing a group still needs is removed."""

from __future__ import annotations

import pytest

from fleettrace.errors import RedisUnavailable
from fleettrace.keys import LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker.consumer import Consumer, GroupState
from fleettrace_worker.trim import group_floor, next_entry_id, trim_floors, trim_streams
from tests.factories import add_traces, numbered_trace


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
    assert removed == {keys.traces: 2, keys.metrics: 0}
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


def test_trim_errors_are_unavailable(redis_client, keys) -> None:
    Consumer(redis_client, keys, PERSIST_GROUP, "c1").ensure_groups()
    redis_client.delete(keys.metrics)
    redis_client.set(keys.metrics, "x")
    with pytest.raises(RedisUnavailable):
        trim_streams(redis_client, keys)
