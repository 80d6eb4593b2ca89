"""Faults under load: LangSmith out, the worker killed, Redis restarted, PostgreSQL
away. Each test sends records through the real emitter and real servers and checks
that every record ends where it belongs exactly once. Figures go to
build/reliability/ (see docs/reliability.md)."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import redis

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace_worker.forward.langsmith.group import ForwardLoop, loop_settings
from fleettrace_worker.forward.langsmith.runs import plan_root_id
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.keys import LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters
from tests.factories import numbered_trace
from tests.langsmith_server import Fault, LangSmithServer
from tests.reliability import report
from tests.servers import PrivatePostgres, PrivateRedis
from tests.waiting import wait_until
from tests.worker_helpers import migrated, start_worker, worker_env

pytestmark = pytest.mark.slow

API_KEY = "lsv2_fault_test_key_0123456789"


#: What the fault tests' calls share; plan and decision vary with the number.
FAULT_CALL = {
    "model": "gpt-4o-mini",
    "completion_tokens": 20,
    "latency_ms": 15.0,
    "tool_calls": [],
}


def expected_run_ids(records: list[LLMTrace]) -> set[str]:
    ids = {str(r.trace_id) for r in records}
    ids |= {str(plan_root_id(r.plan_id, r.started_at.date())) for r in records if r.plan_id}
    return ids


def langsmith_pending(client: redis.Redis, keys: Keys) -> int:
    return sum(
        int(client.xpending(stream, LANGSMITH_GROUP)["pending"])  # type: ignore[index]
        for stream in keys.streams
        if client.exists(stream)
    )


@pytest.fixture
def langsmith() -> Iterator[LangSmithServer]:
    with LangSmithServer(api_key=API_KEY) as server:
        yield server


def test_langsmith_503_then_429_then_healthy_every_run_arrives_once(
    langsmith: LangSmithServer, redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    # Each fault lasts five times the loop's longest backoff (2 s) and its request
    # timeout (2 s): many failed rounds at the capped pace, then recovery.
    outage_s = 10.0
    langsmith.inject(
        Fault("status", status=503, duration_s=outage_s),
        Fault("status", status=429, duration_s=outage_s),
    )
    settings = LangSmithSettings(
        enabled=True,
        endpoint=langsmith.url,
        api_key=API_KEY,
        project="fault-suite",
        retry_for_s=3600.0,
        backoff_initial_s=0.2,
        backoff_max_s=2.0,
        request_timeout_s=2.0,
    )
    consumer = Consumer(redis_client, keys, LANGSMITH_GROUP, "fwd-outage")
    loop = ForwardLoop(consumer, settings, loop=loop_settings(settings))
    stop = threading.Event()
    worker = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    worker.start()

    records: list[LLMTrace] = []
    emitter = Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace))
    try:
        # Records keep coming through both faults: 30 per second for 17 s.
        for second in range(17):
            for i in range(30):
                n = second * 30 + i
                record = numbered_trace(
                    n,
                    FAULT_CALL,
                    actor=f"actor-{n % 3}",
                    prompt_tokens=100 + n,
                    started_at=datetime.now(UTC),
                )
                records.append(record)
                emitter.record(record)
            time.sleep(1.0)
        assert emitter.flush(30)
    finally:
        emitter.close()
    assert emitter.stats.dropped == 0

    expected = expected_run_ids(records)
    try:
        wait_until(
            lambda: langsmith.healthy_since is not None, timeout_s=120, message="faults spent"
        )
        wait_until(
            lambda: langsmith.run_ids() >= expected and langsmith_pending(redis_client, keys) == 0,
            timeout_s=120,
            message="every run delivered",
        )
        caught_up_s = time.monotonic() - (langsmith.healthy_since or 0.0)
    finally:
        stop.set()
        worker.join(30)

    assert langsmith.run_ids() == expected
    assert langsmith.duplicates() == 0
    assert langsmith_pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    answers = dict(langsmith.recorded.answers)
    assert answers.get(503, 0) > 0
    assert answers.get(429, 0) > 0
    report(
        "langsmith_outage",
        {
            "records_sent": len(records),
            "runs_expected": len(expected),
            "runs_stored": len(langsmith.run_ids()),
            "runs_duplicated": langsmith.duplicates(),
            "conflicts_409": sum(langsmith.recorded.conflicts.values()),
            "dead_letters": 0,
            "pending_after": 0,
            "answers_503": answers.get(503, 0),
            "answers_429": answers.get(429, 0),
            "retries": loop.stats.retries,
            "outage_s": 2 * outage_s,
            "catch_up_after_healthy_s": round(caught_up_s, 2),
        },
    )


def _langsmith_env(
    server: LangSmithServer, redis_url: str, database_url: str, keys: Keys
) -> dict[str, str]:
    env = worker_env(redis_url, database_url, keys)
    env.update(
        LANGSMITH_TRACING="true",
        LANGSMITH_ENDPOINT=server.url,
        LANGSMITH_API_KEY=API_KEY,
        LANGSMITH_PROJECT="fault-suite",
        FLEETTRACE_LANGSMITH_BACKOFF_INITIAL_S="0.1",
        FLEETTRACE_LANGSMITH_BACKOFF_MAX_S="1",
    )
    return env


def test_worker_killed_while_forwarding_loses_no_run(
    redis_url: str, redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    records = [
        numbered_trace(
            n,
            FAULT_CALL,
            actor=f"actor-{n % 3}",
            prompt_tokens=100 + n,
            started_at=datetime.now(UTC),
        )
        for n in range(3000)
    ]
    with Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace)) as emitter:
        for record in records:
            emitter.record(record)
        assert emitter.flush(30)
    expected = expected_run_ids(records)
    kills = 0
    started = time.monotonic()
    with LangSmithServer(api_key=API_KEY, delay_s=0.01) as server:
        env = _langsmith_env(server, redis_url, database_url, keys)
        args = ("--only", "langsmith", "--consumer", "fwd-killed", "--claim-idle-ms", "500")
        for fraction in (0.2, 0.45, 0.7):
            worker = start_worker(*args, env=env)
            try:
                wait_until(
                    lambda f=fraction, w=worker: (
                        w.poll() is not None  # type: ignore[misc]
                        or len(server.run_ids()) >= f * len(expected)
                    ),
                    timeout_s=120,
                    message=f"{fraction:.0%} of the runs forwarded",
                )
                assert worker.poll() is None, worker.communicate()[1][-2000:]
            finally:
                worker.kill()
                worker.communicate(timeout=30)
            kills += 1
            assert len(server.run_ids()) < len(expected)
        worker = start_worker(*args, "--burst", env=env)
        try:
            _, err = worker.communicate(timeout=300)
        finally:
            worker.kill()
        assert worker.returncode == 0, err[-2000:]
        elapsed_s = time.monotonic() - started

        assert server.run_ids() == expected
        assert server.duplicates() == 0
        assert langsmith_pending(redis_client, keys) == 0
        assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
        resent = sum(server.recorded.conflicts.values())
        report(
            "langsmith_sigkill",
            {
                "records_sent": len(records),
                "runs_expected": len(expected),
                "runs_stored": len(server.run_ids()),
                "runs_duplicated": server.duplicates(),
                "runs_posted_again_same_id_409": resent,
                "dead_letters": 0,
                "pending_after": 0,
                "sigkills": kills,
                "total_s": round(elapsed_s, 2),
            },
        )


# -- persistence under Redis and PostgreSQL outages -----------------------------------------


class Producers:
    """Emitters on threads of their own sending records at a steady pace, as agent
    processes do, while the test breaks a server under them."""

    def __init__(
        self, redis_url: str, keys: Keys, *, threads: int, per_thread: int, seconds: float
    ) -> None:
        self.emitters = [
            Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace, retry_max_s=1.0))
            for _ in range(threads)
        ]
        self.per_thread = per_thread
        self.seconds = seconds
        self.decisions: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._produce, args=(n, em), daemon=True)
            for n, em in enumerate(self.emitters)
        ]

    def _produce(self, number: int, emitter: Emitter) -> None:
        steps = 80
        for step in range(steps):
            for i in range(self.per_thread // steps):
                n = number * 1_000_000 + step * 10_000 + i
                record = numbered_trace(
                    n,
                    FAULT_CALL,
                    actor=f"actor-{n % 3}",
                    prompt_tokens=100 + n,
                    started_at=datetime.now(UTC),
                )
                with self._lock:
                    self.decisions.append(str(record.decision_id))
                emitter.record(record)
            time.sleep(self.seconds / steps)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def finish(self, timeout_s: float = 120.0) -> dict[str, int]:
        for thread in self._threads:
            thread.join(timeout_s)
        flushed = all(em.flush(timeout_s) for em in self.emitters)
        for em in self.emitters:
            em.close()
        assert flushed
        return {
            "dropped": sum(em.stats.dropped for em in self.emitters),
            "send_failures": sum(em.stats.send_failures for em in self.emitters),
        }


def _rows(db: str) -> tuple[int, int]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT decision_id) FROM llm_traces"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _rows_or_zero(db: str) -> int:
    try:
        return _rows(db)[0]
    except psycopg.OperationalError:
        return 0


def test_redis_restarted_under_load_every_record_stored_once(
    private_redis: PrivateRedis, database_url: str
) -> None:
    keys = Keys(f"restart-{uuid.uuid4().hex[:8]}")
    db = migrated(database_url)
    env = worker_env(private_redis.url, db, keys)
    worker = start_worker("--consumer", "w-restart", "--block-ms", "200", env=env)
    # 25 s of load: the first rows, Redis away for 10 s, then 10 s more.
    producers = Producers(private_redis.url, keys, threads=2, per_thread=4000, seconds=25)
    try:
        producers.start()
        wait_until(lambda: _rows(db)[0] >= 1000, timeout_s=60, message="first rows")
        private_redis.stop()
        down_at = time.monotonic()
        time.sleep(10)
        private_redis.start()
        restarted_at = time.monotonic()
        emitted = producers.finish()
        sent = len(producers.decisions)
        after_last_send_s = wait_until(
            lambda: _rows(db)[0] >= sent, timeout_s=120, message="every record stored"
        )
        caught_up_s = time.monotonic() - restarted_at
        assert worker.poll() is None, "the worker must ride out the restart"
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-2000:]
    client = redis.Redis.from_url(private_redis.url)
    try:
        rows, distinct = _rows(db)
        assert emitted["dropped"] == 0
        assert rows == distinct == sent
        assert _stored_decisions(db) == set(producers.decisions)
        assert persist_pending(client, keys) == 0
        assert client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0
    finally:
        client.close()
    report(
        "redis_restart",
        {
            "records_sent": sent,
            "rows_stored": rows,
            "rows_duplicated": rows - distinct,
            "dead_letters": 0,
            "emitter_dropped": emitted["dropped"],
            "emitter_send_failures": emitted["send_failures"],
            "redis_down_s": round(restarted_at - down_at, 2),
            "all_stored_after_restart_s": round(caught_up_s, 2),
            "all_stored_after_last_send_s": round(after_last_send_s, 2),
        },
    )


def test_postgres_away_for_20_s_under_load_persistence_catches_up(
    redis_url: str, redis_client: redis.Redis, keys: Keys, private_postgres: PrivatePostgres
) -> None:
    db = migrated(private_postgres.url)
    env = worker_env(redis_url, db, keys)
    worker = start_worker("--consumer", "w-pg", "--block-ms", "200", env=env)
    # 30 s of load: the first rows, PostgreSQL away for 20 s (twice the pool's 10 s
    # wait for a connection), then the rest.
    producers = Producers(redis_url, keys, threads=2, per_thread=4000, seconds=30)
    try:
        producers.start()
        wait_until(lambda: _rows_or_zero(db) >= 1000, timeout_s=60, message="first rows")
        private_postgres.stop()
        time.sleep(20)
        backlog = int(redis_client.xlen(keys.traces))
        private_postgres.start()
        restarted_at = time.monotonic()
        emitted = producers.finish()
        sent = len(producers.decisions)
        after_last_send_s = wait_until(
            lambda: _rows_or_zero(db) >= sent, timeout_s=120, message="catch up"
        )
        caught_up_s = time.monotonic() - restarted_at
        assert worker.poll() is None, "the worker must ride out the outage"
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-2000:]
    rows, distinct = _rows(db)
    assert emitted["dropped"] == 0
    assert rows == distinct == sent
    assert _stored_decisions(db) == set(producers.decisions)
    assert persist_pending(redis_client, keys) == 0
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0
    report(
        "postgres_outage",
        {
            "records_sent": sent,
            "rows_stored": rows,
            "rows_duplicated": rows - distinct,
            "dead_letters": 0,
            "emitter_dropped": emitted["dropped"],
            "postgres_down_s": 20,
            "stream_entries_when_back": backlog,
            "all_stored_after_restart_s": round(caught_up_s, 2),
            "all_stored_after_last_send_s": round(after_last_send_s, 2),
        },
    )


def _stored_decisions(db: str) -> set[str]:
    with psycopg.connect(db) as conn:
        return {str(row[0]) for row in conn.execute("SELECT decision_id FROM llm_traces")}


def persist_pending(client: redis.Redis, keys: Keys) -> int:
    return sum(
        int(client.xpending(stream, PERSIST_GROUP)["pending"])  # type: ignore[index]
        for stream in keys.streams
        if client.exists(stream)
    )
