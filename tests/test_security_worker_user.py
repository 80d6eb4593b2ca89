"""The worker's Redis user of docs/security.md: it discovers, consumes, stores,
forwards, dead-letters and trims, and loads the batch function an agent user cannot."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
import redis

from fleettrace.batch_script import library_loaded
from fleettrace.connection import connect_redis
from fleettrace.keys import APPLY_FUNCTION, LIBRARY_NAME, Keys
from fleettrace.live import read_live
from fleettrace.plans import count_plans, top_plans
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.forward.langsmith.group import ForwardLoop, loop_settings
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.keys import LANGSMITH_GROUP
from fleettrace_worker.process import Worker
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters, replay_dead_letters
from fleettrace_worker.stream.trim import trim_streams
from tests.acl import API_KEY, NS, Secured, _secure, run_worker_once
from tests.factories import _trace
from tests.langsmith_server import Fault, LangSmithServer
from tests.servers import PrivateRedis
from tests.waiting import wait_until
from tests.worker_helpers import migrated, trace_rows


def test_the_worker_user_discovers_consumes_stores_forwards_dead_letters_and_trims(
    secured: Secured, database_url: str
) -> None:
    records = {"alice": [_trace(i) for i in range(30)], "bob": [_trace(i) for i in range(7)]}
    for user, batch in records.items():
        with secured.emitter(user) as em:
            for record in batch:
                em.record(record)
            assert em.flush(10)
    keys = secured.keys
    db = run_worker_once(secured, database_url)
    assert trace_rows(db) == 37
    with psycopg.connect(db) as conn:
        by_producer = dict(
            conn.execute("SELECT producer, count(*) FROM llm_traces GROUP BY producer").fetchall()
        )
        namespaces = conn.execute("SELECT DISTINCT namespace FROM llm_traces").fetchall()
    assert by_producer == {"alice": 30, "bob": 7}
    assert namespaces == [(NS,)]
    worker = connect_redis(secured.urls["worker"])
    try:
        with LangSmithServer(api_key=API_KEY) as server:
            settings = LangSmithSettings(
                enabled=True, endpoint=server.url, api_key=API_KEY, backoff_initial_s=0.01
            )
            server.inject(Fault("status", status=400, count=1))
            forward = ForwardLoop(
                Consumer(worker, keys, LANGSMITH_GROUP, "w1"),
                LangSmithSettings(**{**_fields(settings), "concurrency": 1}),
                loop=loop_settings(settings, burst=True),
            )
            forward.run(threading.Event())
            assert len(list_dead_letters(worker, keys, LANGSMITH_GROUP)) >= 1
            report = replay_dead_letters(worker, keys, LANGSMITH_GROUP)
            assert report.replayed and not report.refused
            forward.run(threading.Event())
            sent = {str(r.trace_id) for batch in records.values() for r in batch}
            assert sent <= server.run_ids()
        assert list_dead_letters(worker, keys, LANGSMITH_GROUP) == []

        trim_streams(worker, keys)
        assert read_live(worker, keys)
        assert {p.plan_id for p in top_plans(worker, keys, 5).plans} == {
            "plan-0",
            "plan-1",
            "plan-2",
        }
        assert count_plans(worker, keys) == (3, True)
        worker.set(keys.worker_health("w1"), "{}", ex=10)
        assert worker.get(keys.worker_health("w1")) == b"{}"
        # Even the worker cannot touch another namespace or administer the server.
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.xrange(Keys(f"other-{uuid.uuid4().hex[:8]}").traces)
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.execute_command("FLUSHDB")
    finally:
        worker.close()


def test_a_missing_function_is_a_counted_failure_until_a_worker_loads_it(
    database_url: str,
) -> None:
    server = PrivateRedis(appendonly=False, batch_library=False)
    server.start()
    try:
        secured = _secure(server)
        em = secured.emitter("alice")
        em.record(_trace(0))
        wait_until(lambda: em.stats.send_failures >= 2, message="the emitter to retry")
        stats = em.stats
        assert (stats.sent, stats.buffered, stats.dropped) == (0, 1, 0)
        assert f"{APPLY_FUNCTION} is not loaded" in (stats.last_error or "")
        assert secured.admin.keys("*") == []
        # A worker loads the library at start, and at each health tick when missing.
        worker = Worker(
            WorkerSettings(
                secured.urls["worker"],
                migrated(database_url),
                namespace=NS,
                block_ms=100,
                health_interval_s=0.2,
            )
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert em.flush(20)
            assert em.stats.sent == 1
            em.close()
            secured.admin.function_delete(LIBRARY_NAME)  # as a restart without persistence
            wait_until(lambda: library_loaded(secured.admin) is True, 20, "the reload")
        finally:
            worker.stop.set()
            thread.join(20)
        secured.admin.close()
    finally:
        server.close()


def _fields(settings: LangSmithSettings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}
