"""Faults under load: LangSmith out, the worker killed, Redis restarted, PostgreSQL
away. Each test sends records through the real emitter and real servers and checks
that every record ends where it belongs exactly once. Figures go to
build/reliability/ (see docs/reliability.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import LANGSMITH_GROUP, Keys
from fleettrace.model import LLMTrace
from fleettrace_worker.consumer import Consumer
from fleettrace_worker.deadletter import list_dead_letters
from fleettrace_worker.forwarder import ForwardLoop, loop_settings
from fleettrace_worker.langsmith_settings import LangSmithSettings
from fleettrace_worker.runs import plan_root_id
from tests.langsmith_server import Fault, LangSmithServer
from tests.reliability import report, wait_until

pytestmark = pytest.mark.slow

API_KEY = "lsv2_fault_test_key_0123456789"


def make_trace(index: int) -> LLMTrace:
    return LLMTrace(
        plan_id=f"plan-{index % 7}",
        decision_id=f"d-{index}",
        actor=f"actor-{index % 3}",
        provider="openai",
        model="gpt-4o-mini",
        prompt_tokens=100 + index,
        completion_tokens=20,
        latency_ms=15.0,
        started_at=datetime.now(UTC),
    )


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
    outage_s = 20.0
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
        # Records keep coming during the whole outage: 30 per second for 35 s.
        for second in range(35):
            for i in range(30):
                record = make_trace(second * 30 + i)
                records.append(record)
                emitter.record(record)
            time.sleep(1.0)
        assert emitter.flush(30)
    finally:
        emitter.close()
    assert emitter.stats.dropped == 0

    expected = expected_run_ids(records)
    try:
        wait_until(lambda: langsmith.healthy_since is not None, timeout_s=120, what="faults spent")
        wait_until(
            lambda: langsmith.run_ids() >= expected and langsmith_pending(redis_client, keys) == 0,
            timeout_s=120,
            what="every run delivered",
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
