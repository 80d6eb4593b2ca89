"""The emitter when Redis goes away, comes back, or loses a reply (private servers)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

import fleettrace
from fleettrace import LLMTrace
from fleettrace.emitter import Emitter
from fleettrace.emitter_settings import CAPTURED_RECORD_BYTES, buffer_bytes
from fleettrace.keys import Keys
from tests.emitting import emitter_figures, live_hash, make_emitter, stream_records
from tests.factories import llm_trace
from tests.servers import PrivateRedis, free_port
from tests.waiting import wait_until

KEYS = Keys("faults")
DEADLINE_S = 30.0


def trace_ids(client: redis.Redis) -> list[uuid.UUID]:
    return [r.trace_id for r in stream_records(client, KEYS.traces)]  # type: ignore[union-attr]


@pytest.fixture
def fast_retry() -> dict[str, float | int]:
    return {"retry_initial_s": 0.01, "retry_max_s": 0.05, "socket_timeout_s": 2.0}


def hold_a_batch_while_down(
    private_redis: PrivateRedis, emitter: Emitter, first: list[LLMTrace]
) -> None:
    """Stop Redis and let the sender take ``first`` as the batch in hand that it retries."""
    private_redis.stop()
    for record in first:
        emitter.record(record)
    wait_until(lambda: emitter._in_hand == len(first), DEADLINE_S, "the sender to take its batch")
    wait_until(lambda: emitter.stats.send_failures >= 1, DEADLINE_S, "a failed send")


@pytest.mark.parametrize("overflow", ["drop_oldest", "block"])
def test_dropped_count_is_exact_when_the_buffer_overflows(
    private_redis: PrivateRedis,
    fast_retry: dict[str, float | int],
    overflow: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emitter = make_emitter(
        private_redis.url,
        KEYS,
        max_batch_records=5,
        max_buffer_records=10,
        overflow=overflow,
        block_timeout_s=0.01,
        **fast_retry,
    )
    records = [
        llm_trace(trace_id=uuid.UUID(int=i + 1), prompt_tokens=i, completion_tokens=1)
        for i in range(30)
    ]
    hold_a_batch_while_down(private_redis, emitter, records[:5])
    with caplog.at_level(logging.WARNING, logger="fleettrace.emitter"):
        for record in records[5:]:
            emitter.record(record)  # never raises, never waits longer than block_timeout_s
    stats = emitter.stats
    assert stats.dropped == 15
    assert stats.buffered == 15  # ten in the buffer, five in hand
    assert stats.accepted == 30  # the block policy's refusals are accepted and dropped
    assert stats.accepted == stats.sent + stats.dropped + stats.buffered
    assert "fleettrace dropped 1 records (buffer full" in caplog.text
    assert "Connection refused" in (stats.last_error or "")

    private_redis.start()
    assert emitter.flush(DEADLINE_S)
    client = redis.Redis.from_url(private_redis.url)
    kept = records[:5] + (records[-10:] if overflow == "drop_oldest" else records[5:15])
    assert trace_ids(client) == [r.trace_id for r in kept]
    assert emitter_figures(client, KEYS) == {"records": 15, "batches": 3, "dropped": 15}
    tokens = live_hash(client, KEYS, "actor.token_usage")
    prompt = "provider=openai,model=gpt-4o,token_type=prompt"
    assert tokens[(prompt, "count")] == "15"
    assert float(tokens[(prompt, "sum")]) == sum(r.prompt_tokens for r in kept)
    assert emitter.close()
    client.close()


def test_close_while_redis_is_down_counts_what_is_left(
    private_redis: PrivateRedis, fast_retry: dict[str, float | int]
) -> None:
    emitter = make_emitter(private_redis.url, KEYS, max_batch_records=5, **fast_retry)
    hold_a_batch_while_down(
        private_redis,
        emitter,
        [
            llm_trace(trace_id=uuid.UUID(int=i + 1), prompt_tokens=i, completion_tokens=1)
            for i in range(5)
        ],
    )
    for i in range(5, 12):
        emitter.record(
            llm_trace(trace_id=uuid.UUID(int=i + 1), prompt_tokens=i, completion_tokens=1)
        )
    assert emitter.flush(0.05) is False
    assert emitter.close(0.05) is False
    wait_until(lambda: emitter.stats.dropped == 12, DEADLINE_S, "the batch in hand to be given up")
    assert emitter.stats.sent == 0


def test_nothing_lost_or_doubled_across_a_restart(
    private_redis: PrivateRedis, fast_retry: dict[str, float | int]
) -> None:
    emitter = make_emitter(private_redis.url, KEYS, max_batch_records=50, **fast_retry)
    total = 6000
    before, during = total // 3, 2 * total // 3
    for i in range(before):
        emitter.record(
            llm_trace(trace_id=uuid.UUID(int=i + 1), prompt_tokens=i, completion_tokens=1)
        )
    # Redis goes away once the first batches are in (the sender may hold one more)...
    wait_until(lambda: emitter.stats.sent > 0, DEADLINE_S, "a first batch sent")
    private_redis.stop()
    for i in range(before, during):
        emitter.record(
            llm_trace(trace_id=uuid.UUID(int=i + 1), prompt_tokens=i, completion_tokens=1)
        )
    # ...refuses at least one batch, and comes back while records keep arriving.
    wait_until(lambda: emitter.stats.send_failures >= 1, DEADLINE_S, "a send refused")
    private_redis.start()
    for i in range(during, total):
        emitter.record(
            llm_trace(trace_id=uuid.UUID(int=i + 1), prompt_tokens=i, completion_tokens=1)
        )
    assert emitter.flush(DEADLINE_S)
    stats = emitter.stats
    assert stats.send_failures >= 1
    assert stats.dropped == 0
    client = redis.Redis.from_url(private_redis.url)
    ids = trace_ids(client)
    assert len(ids) == len(set(ids)) == total
    assert set(ids) == {uuid.UUID(int=i + 1) for i in range(total)}
    tokens = live_hash(client, KEYS, "actor.token_usage")
    prompt = "provider=openai,model=gpt-4o,token_type=prompt"
    assert tokens[(prompt, "count")] == str(total)
    assert float(tokens[(prompt, "sum")]) == sum(range(total))
    assert emitter_figures(client, KEYS)["records"] == total
    emitter.close()
    client.close()


@pytest.fixture
def debug_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(appendonly=False, extra_args=("--enable-debug-command", "yes"))
    server.start()
    yield server
    server.close()


def _answers(url: str) -> bool:
    """Whether the server replies to PING within 50 ms (not while it runs DEBUG SLEEP)."""
    client = redis.Redis.from_url(url, socket_timeout=0.05)
    try:
        return bool(client.ping())
    except redis.TimeoutError:
        return False
    finally:
        client.close()


@pytest.mark.redis_version(7, 0)  # --enable-debug-command is a 7.0 option
def test_a_batch_whose_reply_was_lost_is_applied_once(debug_redis: PrivateRedis) -> None:
    """The server stalls (DEBUG SLEEP) after reading the script call: the emitter times
    out, reconnects and re-sends the same batch; when the server wakes it runs both
    calls, and the second finds the batch's marker."""
    emitter = make_emitter(
        debug_redis.url, KEYS, socket_timeout_s=0.3, retry_initial_s=0.01, retry_max_s=0.05
    )
    emitter.record(llm_trace(trace_id=uuid.UUID(int=1), prompt_tokens=0, completion_tokens=1))
    assert emitter.flush(DEADLINE_S)  # the function is known; the next call is FCALL only
    admin = redis.Redis.from_url(debug_redis.url)
    calls_before = admin.info("commandstats")["cmdstat_fcall"]["calls"]
    sleeper = threading.Thread(
        target=lambda: redis.Redis.from_url(debug_redis.url).execute_command("DEBUG", "SLEEP", 2)
    )
    sleeper.start()
    wait_until(lambda: not _answers(debug_redis.url), DEADLINE_S, "the server to sleep")
    emitter.record(llm_trace(trace_id=uuid.UUID(int=2), prompt_tokens=1, completion_tokens=1))
    assert emitter.flush(DEADLINE_S)
    sleeper.join(DEADLINE_S)
    assert emitter.stats.send_failures >= 1
    assert admin.info("commandstats")["cmdstat_fcall"]["calls"] - calls_before >= 2
    assert trace_ids(admin) == [uuid.UUID(int=1), uuid.UUID(int=2)]
    assert emitter_figures(admin, KEYS)["records"] == 2
    emitter.close()
    admin.close()


def test_unreachable_port_never_raises_into_the_caller(fast_retry: dict[str, float | int]) -> None:
    emitter = make_emitter(
        f"redis://127.0.0.1:{free_port()}/0", KEYS, max_buffer_records=3, **fast_retry
    )
    for i in range(10):
        emitter.record(
            llm_trace(trace_id=uuid.UUID(int=i + 1), prompt_tokens=i, completion_tokens=1)
        )
    assert emitter.flush(0.05) is False
    emitter.close(0.05)
    wait_until(
        lambda: emitter.stats.dropped == 10, DEADLINE_S, "every record to be counted as dropped"
    )


def test_a_bound_in_bytes_drops_the_oldest_until_a_record_fits(
    private_redis: PrivateRedis, fast_retry: dict[str, float | int]
) -> None:
    """``max_buffer_bytes`` bounds the buffer by the estimated size of its records: ten
    captured LLM calls fill a bound of ten; a prebuilt record, larger, drops as many of
    the oldest as it takes to fit. Every drop is counted, here and in Redis."""
    emitter = make_emitter(
        private_redis.url,
        KEYS,
        max_batch_records=5,
        max_buffer_bytes=10 * CAPTURED_RECORD_BYTES,
        **fast_retry,
    )
    private_redis.stop()

    def call(tokens: int) -> None:
        with fleettrace.llm_call("openai", "gpt-4o", emitter=emitter) as made:
            made.update(prompt_tokens=tokens, completion_tokens=1)

    for tokens in range(5):
        call(tokens)
    wait_until(lambda: emitter._in_hand == 5, DEADLINE_S, "the sender to take its batch")
    for tokens in range(5, 25):
        call(tokens)
    assert (emitter.stats.buffered, emitter.stats.dropped) == (15, 10)
    prebuilt = llm_trace(prompt_tokens=1000, completion_tokens=1)
    emitter.record(prebuilt)
    # The captured calls that stay beside it: as many as fit with it under the bound.
    left = max(n for n in range(10) if buffer_bytes(n + 1, 1) <= 10 * CAPTURED_RECORD_BYTES)
    stats = emitter.stats
    assert stats.buffered == 5 + left + 1
    assert stats.dropped == 10 + (10 - left)
    assert stats.accepted == stats.sent + stats.dropped + stats.buffered

    private_redis.start()
    assert emitter.flush(DEADLINE_S)
    client = redis.Redis.from_url(private_redis.url)
    sent = stream_records(client, KEYS.traces)
    kept = [*range(5), *range(25 - left, 25), 1000]
    assert [r.prompt_tokens for r in sent] == kept  # type: ignore[union-attr]
    assert emitter_figures(client, KEYS)["dropped"] == stats.dropped
    assert emitter.close()
    client.close()
