"""The sender thread against errors it did not expect, and the emitter's accounting
through an outage: every accepted record is sent, dropped or buffered, always."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import pytest
import redis

import fleettrace
from fleettrace import batching
from fleettrace.emitter import Emitter
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from tests.emitting import emitter_figures, make_emitter, stream_records
from tests.factories import llm_trace
from tests.servers import PrivateRedis
from tests.waiting import wait_until

DEADLINE_S = 30.0
FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.05, "socket_timeout_s": 2.0}


def trace(i: int) -> LLMTrace:
    return llm_trace(
        trace_id=uuid.UUID(int=i + 1), provider="openai", model="gpt-4o", prompt_tokens=i
    )


def accounted(emitter: Emitter) -> bool:
    stats = emitter.stats
    assert stats.accepted == stats.sent + stats.dropped + stats.buffered, stats
    return True


def ids(client: redis.Redis, keys: Keys) -> list[uuid.UUID]:
    return [r.trace_id for r in stream_records(client, keys.traces)]  # type: ignore[union-attr]


class Killed(BaseException):
    """What ends a thread in spite of ``except Exception`` (as SystemExit would)."""


def test_an_unexpected_error_in_the_sender_is_logged_once_and_it_carries_on(
    redis_url: str,
    keys: Keys,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emitter = make_emitter(redis_url, keys)
    real_idle = emitter._idle
    raised: list[int] = []

    def broken_twice() -> bool:
        if len(raised) < 2:
            raised.append(1)
            raise RuntimeError("bug in the sender loop")
        return real_idle()

    emitter._idle = broken_twice  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="fleettrace.emitter"):
        emitter.record(trace(0))
        sender = emitter._sender
        assert emitter.flush(DEADLINE_S)
        emitter.record(trace(1))
        assert emitter.flush(DEADLINE_S)
    assert len(raised) == 2
    assert emitter._sender is sender  # the same thread went on
    assert sender is not None and sender.is_alive()
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(logged) == 1  # twice raised, logged once (rate-limited), with its traceback
    assert "RuntimeError: bug in the sender loop" in logged[0].getMessage()
    assert logged[0].exc_info is not None
    assert ids(redis_client, keys) == [uuid.UUID(int=1), uuid.UUID(int=2)]
    assert emitter.stats.dropped == 0
    assert emitter.close()


def test_record_restarts_a_sender_that_died_and_the_batch_in_hand_still_arrives(
    redis_url: str,
    keys: Keys,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_encode = batching.encode_batch
    deaths: list[BaseException] = []
    calls: list[int] = []

    def dies_once(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise Killed("the sender thread ends here")
        return real_encode(*args)

    monkeypatch.setattr(batching, "encode_batch", dies_once)
    monkeypatch.setattr(threading, "excepthook", lambda hook: deaths.append(hook.exc_value))
    emitter = make_emitter(redis_url, keys)
    for i in range(5):
        emitter.record(trace(i))
    first = emitter._sender
    assert first is not None
    first.join(DEADLINE_S)
    assert not first.is_alive()
    assert [type(d) for d in deaths] == [Killed]
    stats = emitter.stats
    assert (stats.accepted, stats.sent, stats.dropped, stats.buffered) == (5, 0, 0, 5)

    emitter.record(trace(5))  # finds the sender dead and starts another
    assert emitter._sender is not first
    assert emitter.flush(DEADLINE_S)
    assert ids(redis_client, keys) == [uuid.UUID(int=i + 1) for i in range(6)]
    assert emitter.stats.dropped == 0
    assert accounted(emitter)
    assert emitter.close()


@pytest.mark.slow
def test_every_accepted_record_is_sent_dropped_or_buffered_through_an_outage(
    private_redis: PrivateRedis,
) -> None:
    keys = Keys("outage")
    emitter = make_emitter(
        private_redis.url, keys, max_batch_records=10, max_buffer_records=50, **FAST
    )
    emitter.record(trace(0))
    assert emitter.flush(DEADLINE_S)
    private_redis.stop()
    for i in range(1, 101):
        emitter.record(trace(i))
        assert accounted(emitter)
        if i == 5:
            wait_until(
                lambda: accounted(emitter) and emitter._in_hand > 0, message="a batch in hand"
            )
    wait_until(lambda: accounted(emitter) and emitter.stats.send_failures >= 2, message="failures")
    stats = emitter.stats
    # The batch in hand (the sender took 1 to 5 records) and a full buffer of 50 wait;
    # the oldest of the rest were dropped to make room.
    in_hand = emitter._in_hand
    assert 1 <= in_hand <= 5
    assert (stats.accepted, stats.sent, stats.buffered) == (101, 1, in_hand + 50)
    assert stats.dropped == 100 - in_hand - 50

    private_redis.start()
    wait_until(
        lambda: accounted(emitter) and emitter.stats.buffered == 0, message="the buffer to drain"
    )
    assert emitter.flush(DEADLINE_S)
    assert accounted(emitter)
    stats = emitter.stats
    assert (stats.sent, stats.dropped) == (1 + in_hand + 50, 100 - in_hand - 50)
    client = redis.Redis.from_url(private_redis.url)
    assert len(set(ids(client, keys))) == len(ids(client, keys)) == 1 + in_hand + 50
    assert emitter_figures(client, keys)["dropped"] == 100 - in_hand - 50
    assert emitter.close()
    client.close()


def test_the_figures_add_up_while_a_caller_waits_for_room(private_redis: PrivateRedis) -> None:
    keys = Keys("block")
    emitter = make_emitter(
        private_redis.url,
        keys,
        max_batch_records=2,
        max_buffer_records=2,
        overflow="block",
        block_timeout_s=1.0,
        **FAST,
    )
    private_redis.stop()
    for i in range(4):  # two in hand, two in the buffer
        emitter.record(trace(i))
        if i == 1:
            wait_until(lambda: emitter._in_hand == 2, message="the sender to take two")
    blocked = threading.Thread(target=emitter.record, args=(trace(4),))
    blocked.start()
    polls = 0
    while blocked.is_alive():  # the caller waits up to block_timeout_s for room
        assert accounted(emitter)
        polls += 1
        time.sleep(0.01)
    assert polls > 1
    stats = emitter.stats
    assert (stats.accepted, stats.sent, stats.dropped, stats.buffered) == (5, 0, 1, 4)
    assert emitter.close(0.05) is False
    assert accounted(emitter)
    assert emitter.stats.dropped == 5


def test_hooks_appending_from_many_threads_lose_nothing_while_the_sender_takes(
    redis_client: redis.Redis, keys: Keys, redis_url: str
) -> None:
    """Hooks append without the lock while the sender pops batches under it: four
    threads at once, small batches so the sender takes all the time, and every call
    arrives once, with the figures adding up at every look."""
    emitter = make_emitter(redis_url, keys, max_batch_records=7)
    start = threading.Barrier(5)

    def calls(offset: int) -> None:
        start.wait()
        for i in range(500):
            with fleettrace.llm_call("openai", "gpt-4o", emitter=emitter) as call:
                call.update(prompt_tokens=offset + i, completion_tokens=1)

    threads = [threading.Thread(target=calls, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    while any(thread.is_alive() for thread in threads):
        assert accounted(emitter)
        time.sleep(0.001)
    for thread in threads:
        thread.join()
    assert emitter.flush(DEADLINE_S)
    stats = emitter.stats
    assert (stats.accepted, stats.sent, stats.dropped, stats.buffered) == (2000, 2000, 0, 0)
    sent = stream_records(redis_client, keys.traces)
    assert sorted(r.prompt_tokens for r in sent) == sorted(  # type: ignore[union-attr]
        n * 1000 + i for n in range(4) for i in range(500)
    )
    assert len({r.trace_id for r in sent}) == 2000  # type: ignore[union-attr]
    assert emitter_figures(redis_client, keys)["records"] == 2000
    emitter.close()
