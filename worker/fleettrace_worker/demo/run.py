"""The run: a local OpenAI-compatible server, a worker, the agent processes, the
drain, and the count of what ended where.

A worker runs in a thread of this process (or, with ``run_worker=False``, a sidecar
does the storing) while the live figures are shown; the local LLM server runs in
another thread and the agents call it through their wrapped ``openai`` clients. At the
end the rows of this run are counted in PostgreSQL (see :mod:`.accounting`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

from fleettrace.connection import connect_redis
from fleettrace.environment import redact_url
from fleettrace.errors import FleettraceError
from fleettrace.keys import Keys
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.demo.accounting import (
    Counters,
    DeadLetterCounter,
    DemoResult,
    LiveFigures,
    Progress,
)
from fleettrace_worker.demo.agents import AGENT_CLOSE_TIMEOUT_S, run_agent, send_malformed
from fleettrace_worker.demo.llm_server import LLMServer
from fleettrace_worker.demo.settings import AgentReport, DemoSettings
from fleettrace_worker.process import Worker
from fleettrace_worker.store import database
from fleettrace_worker.store.migrations import migrate
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.store.trace_filter import TraceFilter

POLL_S: Final = 0.25
#: How long the local LLM server waits before each answer: a provider's latency,
#: scaled down so that the demo stays short.
LLM_DELAY_S: Final = (0.002, 0.02)
#: After the proof, on a terminal: this many agents, each running a plan and then
#: waiting a few seconds, until Ctrl-C.
TRICKLE_AGENTS: Final = 2
TRICKLE_PAUSE_S: Final = (2.0, 6.0)
#: "Until stopped", as a plan count.
UNLIMITED_PLANS: Final = 10**9


@contextmanager
def _worker(settings: DemoSettings) -> Iterator[Callable[[], None]]:
    """A worker in a thread of this process; yields a check that it is still well."""
    if not settings.run_worker:
        yield lambda: None
        return
    worker = Worker(
        WorkerSettings(
            settings.redis_url,
            settings.database_url,
            namespace=settings.namespace,
            consumer=f"{settings.run_id}-worker",
            block_ms=200,
        )
    )
    failure: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as error:  # noqa: BLE001 - raised again in the calling thread
            failure.append(error)

    def check() -> None:
        if failure:
            raise failure[0]
        if not thread.is_alive():
            raise FleettraceError("the worker stopped before the fleet's records were stored")

    thread = threading.Thread(target=target, name="demo-worker", daemon=True)
    thread.start()
    try:
        yield check
    finally:
        worker.stop.set()
        thread.join()
    if failure:
        raise failure[0]


def run_demo(settings: DemoSettings, show: Callable[[Progress], None]) -> DemoResult:
    """Run the fleet, its LLM server and a worker, calling ``show`` with fresh figures a
    few times a second, and count what ended where."""
    started = time.monotonic()
    keys = Keys(settings.namespace)
    client = connect_redis(settings.redis_url)
    with translate_redis_errors(f"connecting to Redis at {redact_url(settings.redis_url)}"):
        client.ping()
    # One direct connection first: a refused login or a missing database is one clear
    # error now, instead of a pool retrying (and logging) in the background.
    with database.connect(settings.database_url, autocommit=True) as conn:
        migrate(conn)
    pool = database.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        counters = Counters(
            pool,
            settings.run_id,
            LiveFigures(client, keys, settings.run_id),
            DeadLetterCounter(client, keys),
        )
        since = datetime.now(UTC)
        with _worker(settings) as worker_check, LLMServer(LLM_DELAY_S) as llm:
            handwritten = send_malformed(client, keys, settings.run_id, settings.malformed)
            counters.handwritten = handwritten
            reports = _run_fleet(settings, llm.url, counters, show, worker_check)
            sent = sum(report.sent for report in reports) + handwritten
            deadline = time.monotonic() + settings.drain_timeout_s
            progress = counters.progress(0, sent)
            while progress.in_flight and time.monotonic() < deadline:
                worker_check()
                show(progress)
                time.sleep(POLL_S)
                progress = counters.progress(0, sent)
        show(progress)
        # This run's namespace only: another fleet's calls of the same minutes are not
        # the demo's, and the demo's are not theirs.
        costs = LLMTraceRepository(pool).cost_summary(
            ["model"], TraceFilter(since=since, namespace=settings.namespace)
        )
        reasons = tuple(letter.reason for letter in counters.dead.letters())
    finally:
        pool.close()
        client.close()
    return DemoResult(
        settings,
        tuple(reports),
        handwritten,
        progress.traces_stored,
        progress.samples_stored,
        progress.tree_stored,
        progress.dead_letters,
        reasons,
        tuple(costs),
        time.monotonic() - started,
    )


@contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started in the block ignore SIGINT from birth (an ignored signal stays
    ignored across exec): Ctrl-C reaches the whole process group, and an agent still
    importing would print a traceback. This process stops them through their event."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_fleet(
    settings: DemoSettings,
    llm_url: str,
    counters: Counters,
    show: Callable[[Progress], None],
    worker_check: Callable[[], None],
) -> list[AgentReport]:
    # spawn, not fork: an agent must not inherit this process's server handles,
    # connections and worker thread.
    context = multiprocessing.get_context("spawn")
    reports: multiprocessing.queues.Queue[AgentReport] = context.Queue()
    stop = context.Event()
    processes = [
        context.Process(
            target=run_agent,
            args=(settings, llm_url, agent, reports, stop),
            name=f"agent-{agent}",
        )
        for agent in range(settings.agents)
    ]
    with _children_ignore_sigint():
        for process in processes:
            process.start()
    received: list[AgentReport] = []
    try:
        while len(received) < len(processes):
            try:
                received.append(reports.get(timeout=POLL_S))
                continue
            except queue.Empty:
                pass
            running = sum(process.is_alive() for process in processes)
            if running == 0 and reports.empty():
                reported = {report.agent for report in received}
                silent = [p.name for i, p in enumerate(processes) if i not in reported]
                raise FleettraceError(
                    f"agent processes ended without a report: {', '.join(silent)}"
                )
            worker_check()
            show(counters.progress(running))
    finally:
        stop.set()  # a no-op when all reported; after Ctrl-C, the agents finish a plan
        for process in processes:
            process.join(AGENT_CLOSE_TIMEOUT_S)
            if process.is_alive():  # pragma: no cover - an agent hung after reporting
                process.kill()
                process.join()
    return sorted(received, key=lambda report: report.agent)


def keep_live(settings: DemoSettings, stop: threading.Event) -> int:
    """After the proof: the worker, the LLM server and a few agents that run a plan
    now and then, until ``stop`` is set; returns the plans they ran. Their plan ids
    follow the run's (the agents are numbered after its agents)."""
    trickle = replace(
        settings,
        agents=TRICKLE_AGENTS,
        plans=UNLIMITED_PLANS,
        seconds=None,
        pause_s=TRICKLE_PAUSE_S,
        first_agent=settings.agents,
    )
    context = multiprocessing.get_context("spawn")
    reports: multiprocessing.queues.Queue[AgentReport] = context.Queue()
    agents_stop = context.Event()
    with _worker(trickle) as worker_check, LLMServer(LLM_DELAY_S) as llm:
        processes = [
            context.Process(
                target=run_agent,
                args=(trickle, llm.url, trickle.first_agent + i, reports, agents_stop),
                name=f"agent-{trickle.first_agent + i}",
            )
            for i in range(trickle.agents)
        ]
        with _children_ignore_sigint():
            for process in processes:
                process.start()
        try:
            while not stop.wait(POLL_S):
                worker_check()
        finally:
            agents_stop.set()
            plans = 0
            for process in processes:
                process.join(AGENT_CLOSE_TIMEOUT_S)
                if process.is_alive():  # pragma: no cover - an agent hung
                    process.kill()
                    process.join()
            for _ in processes:
                try:
                    plans += reports.get(timeout=POLL_S).plans
                except queue.Empty:
                    break
    return plans
