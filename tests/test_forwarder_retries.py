"""The ``langsmith`` group when LangSmith is down or refuses: retries, the retry window,
dead letters and their replay, against the real Redis and the LangSmith-compatible
server, through the real ``langsmith`` client."""

from __future__ import annotations

import threading

import pytest
import redis

from fleettrace.codec import encode_record
from fleettrace.keys import Keys
from fleettrace_worker.forward.langsmith.group import ForwardLoop, loop_settings
from fleettrace_worker.keys import LANGSMITH_GROUP
from fleettrace_worker.stream import loop as loop_module
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import (
    DeadLetterLog,
    list_dead_letters,
    replay_dead_letters,
)
from tests.factories import RUN_CALL, add_traces, llm_trace
from tests.langsmith_server import (
    API_KEY,
    Fault,
    LangSmithServer,
    expected_ids,
    langsmith_server,  # noqa: F401 (the fixture "server")
    make_loop,
    pending,
    settings_for,
)
from tests.waiting import wait_until


def test_outage_answers_are_retried_until_langsmith_takes_the_runs(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [
        llm_trace(RUN_CALL, plan_id="plan-a"),
        llm_trace(RUN_CALL, plan_id=None),
        llm_trace(RUN_CALL, plan_id="plan-b"),
    ]
    add_traces(redis_client, keys, records)
    server.inject(
        Fault("status", status=503, count=2),
        Fault("status", status=500, count=1),
        Fault("status", status=429, retry_after="0.3", count=1),
        Fault("status", status=429, count=1),
        Fault("close", count=1),
        Fault("sleep", sleep_s=1.5, count=1),
        Fault("status", status=502, count=1),
    )
    # One request at a time, so that each fault meets exactly one attempt.
    settings = settings_for(server, request_timeout_s=0.5, concurrency=1)
    loop = make_loop(redis_client, keys, settings)
    loop.run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    assert loop.stats.retries == 8
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []


def test_a_refused_run_is_a_dead_letter_with_the_answer_and_replays(
    server: LangSmithServer,
    redis_client: redis.Redis,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loop_module, "DEAD_LETTER_LOG", DeadLetterLog())
    refused, accepted = llm_trace(RUN_CALL, plan_id=None), llm_trace(RUN_CALL, plan_id=None)
    add_traces(redis_client, keys, [refused, accepted])
    server.inject(Fault("status", status=422, count=1))
    make_loop(redis_client, keys, settings_for(server, concurrency=1)).run(threading.Event())
    said = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"]
    assert said[0].getMessage().startswith("group langsmith dead-lettered 1 record(s)")
    assert "LangSmith answered 422" in said[0].getMessage()

    assert server.run_ids() == {str(accepted.trace_id)}
    [(_, letter)] = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert "LangSmith answered 422" in letter.reason
    assert "injected" in letter.reason
    assert letter.record == encode_record(refused)
    assert letter.position == 0
    assert pending(redis_client, keys) == 0

    report = replay_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert len(report.replayed) == 1
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    assert server.run_ids() == {str(accepted.trace_id), str(refused.trace_id)}
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    assert pending(redis_client, keys) == 0


def test_a_refused_root_keeps_its_calls_back(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id="plan-z"), llm_trace(RUN_CALL, plan_id="plan-z")]
    add_traces(redis_client, keys, records)
    server.inject(Fault("status", status=422, count=1))
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    assert server.run_ids() == set()
    letters = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert [letter.position for _, letter in letters] == [0, 1]
    assert all("LangSmith answered 422" in letter.reason for _, letter in letters)


def test_after_retry_for_s_the_batch_becomes_dead_letters(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id=None), llm_trace(RUN_CALL, plan_id=None)]
    add_traces(redis_client, keys, records)
    server.inject(Fault("status", status=503, duration_s=600))
    loop = make_loop(redis_client, keys, settings_for(server, retry_for_s=0.5))
    loop.run(threading.Event())
    letters = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert len(letters) == 1
    reason = letters[0][1].reason
    assert "LangSmith kept failing for" in reason
    assert "(retry_for_s=0.5)" in reason
    assert "LangSmith answered 503" in reason
    assert letters[0][1].original is not None
    assert pending(redis_client, keys) == 0
    assert server.run_ids() == set()

    server.clear_faults()
    assert len(replay_dead_letters(redis_client, keys, LANGSMITH_GROUP).replayed) == 1
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    assert server.run_ids() == expected_ids(records)


class Ticks:
    """A clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_the_retry_window_spans_batches_so_a_long_outage_drains_quickly(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    for _ in range(3):
        add_traces(redis_client, keys, [llm_trace(RUN_CALL, plan_id=None)])
    server.inject(Fault("status", status=503, duration_s=600))
    loop = make_loop(redis_client, keys, settings_for(server, retry_for_s=1.5, concurrency=1))
    loop.clock = Ticks()
    loop.run(threading.Event())
    letters = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert len(letters) == 3
    # The first batch (one entry) waited out the window: tries 0, 1 and 2 s into the
    # outage. The next batch (the other two entries) met the same outage: one try for
    # the batch, then one for each entry alone, and no waiting.
    assert server.recorded.answers[503] == 3 + 1 + 2
    assert loop.stats.retries == 2
    assert pending(redis_client, keys) == 0


def test_the_retry_window_starts_again_once_langsmith_takes_a_run(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id=None) for _ in range(3)]
    for record in records:
        add_traces(redis_client, keys, [record])
    loop = make_loop(redis_client, keys, settings_for(server, retry_for_s=1.5, concurrency=1))
    loop.clock = Ticks()
    for _ in range(3):
        # One failure before each record: never two in a row, so never past the window.
        server.clear_faults()
        server.inject(Fault("status", status=503, count=1))
        loop.run(threading.Event())
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    assert server.run_ids() == expected_ids(records)
    assert server.recorded.answers[503] == 1


def test_stopping_while_langsmith_is_down_leaves_the_entry_pending(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    add_traces(redis_client, keys, [llm_trace(RUN_CALL, plan_id=None)])
    server.inject(Fault("status", status=503, duration_s=600))
    settings = settings_for(server)
    consumer = Consumer(redis_client, keys, LANGSMITH_GROUP, "fwd-stop", claim_idle_ms=60_000)
    loop = ForwardLoop(consumer, settings, loop=loop_settings(settings))
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: loop.stats.retries >= 2, 20, "two retries")
    finally:
        stop.set()
    thread.join(20)
    assert not thread.is_alive()
    assert loop.stats.retries >= 2
    assert loop.stats.ready is False
    assert pending(redis_client, keys) == 1
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_dead_letters_nothing_and_everything_arrives_once_after_the_fix(
    server: LangSmithServer,
    redis_client: redis.Redis,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    records = [
        llm_trace(RUN_CALL, plan_id="plan-k"),
        llm_trace(RUN_CALL, plan_id="plan-k"),
        llm_trace(RUN_CALL, plan_id=None),
        llm_trace(RUN_CALL, plan_id="plan-l"),
    ]
    add_traces(redis_client, keys, records)
    if status == 401:
        server.api_key = "the-key-langsmith-knows"  # ours is wrong
    else:
        server.inject(Fault("status", status=403, duration_s=600))  # ours lacks rights
    # A window of half a second on a clock that moves a second per reading: any
    # failure counted towards retry_for_s would dead-letter the batch at once.
    loop = make_loop(redis_client, keys, settings_for(server, retry_for_s=0.5))
    loop.clock = Ticks()
    thread = threading.Thread(target=loop.run, args=(threading.Event(),))
    thread.start()
    try:
        wait_until(lambda: server.recorded.answers[status] >= 5, 30, f"five {status} answers")
        assert loop.stats.ready is False
        assert "LANGSMITH_API_KEY" in (loop.stats.last_error or "")
        assert pending(redis_client, keys) == 1  # the entry, in hand and unacknowledged
        assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
        assert server.run_ids() == set()
    finally:
        if status == 401:
            server.api_key = API_KEY  # the key is fixed
        else:
            server.clear_faults()
        thread.join(30)
    assert not thread.is_alive()
    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    assert loop.stats.ready is True
    said = [r for r in caplog.records if "LANGSMITH_API_KEY" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelname == "WARNING"
    assert API_KEY not in caplog.text
    loop.close()
