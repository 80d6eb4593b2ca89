"""The demo's run in-process: the fleet beside a worker, agents that die, a worker that
fails or stops early, SIGINT, and the agents' retries and failures."""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable

import psycopg
import pytest
import redis

from fleettrace.errors import FleettraceError
from fleettrace.keys import Keys
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.demo import agents
from fleettrace_worker.demo import run as demo_run
from fleettrace_worker.demo.accounting import Counters, DeadLetterCounter, LiveFigures, Progress
from fleettrace_worker.demo.run import _run_fleet, _worker, run_demo
from fleettrace_worker.demo.settings import DemoSettings
from fleettrace_worker.errors import SchemaVersionError
from fleettrace_worker.process import Worker
from fleettrace_worker.store import database
from fleettrace_worker.store.migrations import migrate
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.mark.slow
def test_run_demo_with_a_worker_sidecar_stores_everything(
    redis_url: str, database_url: str, keys: Keys
) -> None:
    settings = DemoSettings(
        redis_url, database_url, keys.namespace, agents=1, seconds=0.5, run_worker=False
    )
    with psycopg.connect(database_url) as conn:
        migrate(conn)
        conn.commit()
    sidecar = Worker(
        WorkerSettings(redis_url, database_url, namespace=keys.namespace, block_ms=100)
    )
    thread = threading.Thread(target=sidecar.run, daemon=True)
    thread.start()
    shown: list[Progress] = []
    try:
        result = run_demo(settings, shown.append)
    finally:
        sidecar.stop.set()
        thread.join(30)
    assert result.nothing_lost
    assert result.handwritten == 2
    assert result.dead_letters == 1
    assert result.dead_letter_reasons == (
        "prompt_tokens: Input should be greater than or equal to 0",
    )
    assert result.sent == result.stored + 1 > 1
    assert result.dropped == 0
    assert [agent.agent for agent in result.agents] == [0]
    assert result.agents[0].plans >= 1  # as many as fit in half a second
    assert shown[-1].in_flight == 0
    assert shown[-1].sent == result.sent
    assert {row.group["model"] for row in result.costs} <= {
        "gpt-4o",
        "gpt-4o-mini",
        "claude-3-5-sonnet-latest",
        "claude-3-5-haiku-latest",
        "acme-reasoner-2",
    }
    assert sum(row.calls for row in result.costs) == result.traces_stored


@pytest.mark.slow
def test_an_agent_that_dies_without_reporting_is_an_error(
    redis_url: str, database_url: str, keys: Keys
) -> None:
    settings = DemoSettings("http://not-redis", database_url, keys.namespace, agents=1, plans=1)
    client = redis.Redis.from_url(redis_url)
    pool = database.create_pool(database_url)
    try:
        migrate(pool)
        counters = Counters(
            pool,
            settings.run_id,
            LiveFigures(client, keys, settings.run_id),
            DeadLetterCounter(client, keys),
        )
        with pytest.raises(FleettraceError, match=r"ended without a report: agent-0$"):
            _run_fleet(
                settings, "http://127.0.0.1:1/v1", counters, lambda progress: None, lambda: None
            )
    finally:
        pool.close()
        client.close()


def test_a_worker_that_fails_is_reported_not_waited_for(
    redis_url: str, database_url: str, keys: Keys
) -> None:
    settings = DemoSettings(redis_url, database_url, keys.namespace)  # schema never migrated
    seen: list[BaseException] = []

    def failed(check: Callable[[], None]) -> bool:
        try:
            check()
        except SchemaVersionError as error:
            seen.append(error)
        return bool(seen)

    with pytest.raises(SchemaVersionError), _worker(settings) as check:
        wait_until(lambda: failed(check), 30, "the worker's failure to reach the demo")
    assert seen, "the worker's failure never reached the demo"
    assert "run `fleettrace migrate`" in str(seen[0])


def test_a_worker_that_stopped_early_is_an_error(
    redis_url: str, database_url: str, keys: Keys
) -> None:
    with psycopg.connect(database_url) as conn:
        migrate(conn)
        conn.commit()
    settings = DemoSettings(redis_url, database_url, keys.namespace)
    with _worker(settings) as check:
        check()  # running
    with pytest.raises(FleettraceError, match="the worker stopped"):
        check()


def test_sigint_is_left_alone_outside_the_main_thread() -> None:
    seen: list[object] = []

    def probe() -> None:
        with demo_run._children_ignore_sigint():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join(10)
    assert seen == [signal.getsignal(signal.SIGINT)]
    with demo_run._children_ignore_sigint():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is seen[0]


def test_every_agent_retries_and_fails_some_calls_by_count() -> None:
    sim = agents.Simulation(random.Random(1))
    calls = [sim.next_llm_call() for _ in range(32)]
    retried = [n for n, (retries, _) in enumerate(calls) if retries]
    failed = [n for n, (_, fails) in enumerate(calls) if fails]
    assert retried == [1, 9, 17, 25]
    assert all(1 <= calls[n][0] <= 3 for n in retried)
    assert failed == [2, 18]
