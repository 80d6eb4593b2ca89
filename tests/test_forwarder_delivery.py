"""The ``langsmith`` group delivers: every record arrives once as runs, metric entries
are acknowledged without a request, and the loop closes what it opened, against the real
Redis and the LangSmith-compatible server, through the real ``langsmith`` client."""

from __future__ import annotations

import threading

import pytest
import redis

from fleettrace.codec import Kind, encode_lines, new_batch_id
from fleettrace.keys import Keys
from fleettrace.metrics import MetricKey
from fleettrace.model import MetricSample
from fleettrace_worker.forward.langsmith import group as forwarder_module
from fleettrace_worker.forward.langsmith.runs import plan_root_id
from fleettrace_worker.keys import LANGSMITH_GROUP
from fleettrace_worker.stream.deadletter import list_dead_letters
from tests.factories import RUN_CALL, add_samples, add_traces, llm_trace
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


def test_every_trace_arrives_once_as_runs_and_entries_are_acknowledged(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id="plan-a") for _ in range(4)] + [
        llm_trace(RUN_CALL, plan_id="plan-b"),
        llm_trace(RUN_CALL, plan_id=None),
    ]
    add_traces(redis_client, keys, records[:3])
    add_traces(redis_client, keys, records[3:])
    # Entries the persist group dead-letters: this group acknowledges them untouched.
    redis_client.xadd(keys.traces, {b"v": b"0", b"d": b"x"})
    bad_record = encode_lines(Kind.TRACE, [b'{"provider": 1}'], new_batch_id())
    redis_client.xadd(keys.traces, bad_record)  # type: ignore[arg-type]

    loop = make_loop(redis_client, keys, settings_for(server))
    assert API_KEY not in repr(loop)
    assert "api_key='***'" in repr(loop)
    loop.run(threading.Event())

    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    # Each plan root is posted once, however many calls hang under it.
    assert sum(server.recorded.conflicts.values()) == 0
    run = server.recorded.runs[str(records[0].trace_id)]
    assert run["trace_id"] == str(plan_root_id("plan-a", records[0].started_at.date()))
    assert run["session_name"] == "fleet"
    assert run["extra"]["metadata"]["usage_metadata"]["total_tokens"] == 15
    assert server.recorded.api_keys == {API_KEY}
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    assert loop.stats.records == len(records)


def test_metric_entries_are_acknowledged_without_a_request(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    samples = [
        MetricSample(key=key, labels=dict.fromkeys(key.spec.labels, "x"), value=1.0)
        for key in list(MetricKey)[:2]
    ]
    add_samples(redis_client, keys, samples)
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    assert server.run_ids() == set()
    assert [m for m, _ in server.recorded.requests if m == "POST"] == []
    assert pending(redis_client, keys) == 0


def test_a_record_sent_twice_is_the_same_run(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id="plan-a"), llm_trace(RUN_CALL, plan_id=None)]
    add_traces(redis_client, keys, records)
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    # The same records again (an emitter retry, a replay): LangSmith answers 409,
    # which counts as delivered, and keeps one run per id.
    add_traces(redis_client, keys, records)
    make_loop(redis_client, keys, settings_for(server), name="fwd-2").run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    assert sum(server.recorded.conflicts.values()) == 3
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []


def test_many_records_in_parallel_with_faults_arrive_once(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id=f"plan-{i % 5}") for i in range(150)] + [
        llm_trace(RUN_CALL, plan_id=None) for _ in range(50)
    ]
    for start in range(0, len(records), 40):
        add_traces(redis_client, keys, records[start : start + 40])
    server.inject(
        Fault("status", status=503, count=30),
        Fault("status", status=429, retry_after="0.2", count=10),
        Fault("close", count=5),
    )
    loop = make_loop(redis_client, keys, settings_for(server, concurrency=8))
    loop.run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    assert loop.stats.retries >= 1
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    loop.close()


def test_plan_roots_are_forgotten_beyond_the_cache_size(
    server: LangSmithServer,
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forwarder_module, "ROOT_CACHE_SIZE", 1)
    records = [
        llm_trace(RUN_CALL, plan_id="plan-a"),
        llm_trace(RUN_CALL, plan_id="plan-b"),
        llm_trace(RUN_CALL, plan_id="plan-a"),
    ]
    add_traces(redis_client, keys, records)
    make_loop(redis_client, keys, settings_for(server, concurrency=1)).run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    # Each root pushes the other out, so each call posts its root again: 409, one run.
    assert sum(server.recorded.conflicts.values()) == 3
    assert server.duplicates() == 0


def test_closing_the_loop_ends_its_request_threads_and_http_session(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id=None) for _ in range(12)]
    add_traces(redis_client, keys, records)
    loop = make_loop(redis_client, keys, settings_for(server, concurrency=4))
    loop.run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    prefix = forwarder_module.REQUEST_THREAD_PREFIX
    threads = [t for t in loop._pool._threads if t.name.startswith(prefix)]  # type: ignore[attr-defined]
    assert threads and all(t.is_alive() for t in threads)
    session = loop.sender.client.session
    assert any(adapter.poolmanager.pools for adapter in session.adapters.values())
    loop.close()
    loop.close()  # twice is harmless
    assert not any(t.is_alive() for t in threads)
    assert all(not adapter.poolmanager.pools for adapter in session.adapters.values())
    # The client no longer pins its session until the process ends.
    assert loop.sender.client._atexit_handler is None
