"""The demo: a simulated fleet of agent processes, a worker, and the proof that nothing
was lost.

Each agent is a process of its own that records through the real hooks and emitter:
plans with phases, decisions, actors making LLM calls (some fail, some are retried,
some use a model the price table does not know), tools that sometimes fail, context
builds, index queries, sandbox operations and the hot-context gauge. A worker runs in
this process (or, with ``run_worker=False``, a sidecar does the storing) while the
live counters are shown. At the end the rows of this run are counted in PostgreSQL:
every record the agents' emitters put into Redis must be a row or a dead letter.

Every plan id of a run starts with the run id, and so do the ``plan_id`` of every
trace and metric sample, which is how the rows of one run are told apart from other
traffic in a shared database.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import queue
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import orjson
import redis
from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace import hooks
from fleettrace.codec import Kind, encode_lines, encode_record, new_batch_id
from fleettrace.connection import connect_redis, redact_url
from fleettrace.emitter import configure
from fleettrace.errors import FleettraceError
from fleettrace.keys import EMITTER_RECORDS, FIELD_COUNT, PERSIST_GROUP, Keys
from fleettrace.live import read_live
from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace
from fleettrace.plans import total_cost_usd
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker import database
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.deadletter import DeadLetter
from fleettrace_worker.migrations import migrate
from fleettrace_worker.repository import (
    SAMPLES_TABLE,
    TRACES_TABLE,
    CostRow,
    LLMTraceRepository,
    TraceFilter,
)
from fleettrace_worker.runner import Worker

#: (provider, model) pairs the agents call; the last is unknown to the price table.
MODELS: Final = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet-latest"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("acme", "acme-reasoner-2"),
)
ACTORS: Final = ("planner", "researcher", "coder", "reviewer")
TOOLS: Final = ("search", "read_file", "run_tests", "http_get")
#: Every RETRY_EVERY-th LLM call of an agent was retried, every FAIL_EVERY-th failed (by
#: count, not chance: even a short run shows both); a share of tool runs fail.
RETRY_EVERY: Final = 8
FAIL_EVERY: Final = 16
TOOL_FAILURE_RATE: Final = 0.1
#: How long the demo waits for the last records to become rows.
DRAIN_TIMEOUT_S: Final = 60.0
#: How long an agent's emitter may take to deliver its last records at the end.
AGENT_CLOSE_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.25


class RateLimitError(Exception):
    """What a simulated provider raises; its name is the error type the traces carry."""


class ToolError(Exception):
    """A simulated tool failure."""


def new_run_id() -> str:
    """A run id that is also a valid namespace: a run gets a namespace of its own
    unless one is given."""
    return f"demo-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """One demo run."""

    redis_url: str
    database_url: str
    namespace: str
    agents: int = 4
    plans: int = 10
    #: Run plans for this long instead of ``plans`` per agent.
    seconds: float | None = None
    run_worker: bool = True
    #: Records a misbehaving producer writes past the emitter (half of them invalid), to
    #: show the dead-letter path.
    malformed: int = 2
    run_id: str = field(default_factory=new_run_id)
    drain_timeout_s: float = DRAIN_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What one agent process's emitter did (sent: records now in Redis)."""

    agent: int
    plans: int
    sent: int
    dropped: int


@dataclass(frozen=True, slots=True)
class Progress:
    """The figures the progress display shows, read while the fleet runs."""

    agents_running: int
    sent: int
    traces_stored: int
    samples_stored: int
    dead_letters: int
    cost_usd: float
    llm_errors: int
    llm_retries: int

    @property
    def stored(self) -> int:
        return self.traces_stored + self.samples_stored

    @property
    def in_flight(self) -> int:
        return max(self.sent - self.stored - self.dead_letters, 0)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The end of a run: what was sent, what is stored, and what it cost."""

    settings: DemoSettings
    agents: tuple[AgentReport, ...]
    #: Records written past the emitter by :func:`send_malformed`.
    handwritten: int
    traces_stored: int
    samples_stored: int
    dead_letters: int
    #: Why each dead letter of the run could not be stored.
    dead_letter_reasons: tuple[str, ...]
    costs: tuple[CostRow, ...]
    elapsed_s: float

    @property
    def sent(self) -> int:
        return sum(agent.sent for agent in self.agents) + self.handwritten

    @property
    def dropped(self) -> int:
        return sum(agent.dropped for agent in self.agents)

    @property
    def stored(self) -> int:
        return self.traces_stored + self.samples_stored

    @property
    def nothing_lost(self) -> bool:
        return self.sent == self.stored + self.dead_letters


# -- one agent process ------------------------------------------------------------------


@dataclass
class Simulation:
    """One agent's dice: random choices, and the count of its LLM calls."""

    rng: random.Random
    llm_calls: int = 0

    def next_llm_call(self) -> tuple[int, bool]:
        """(retries before this call succeeded or failed, whether it fails)."""
        number = self.llm_calls
        self.llm_calls += 1
        retries = self.rng.randint(1, 3) if number % RETRY_EVERY == 1 else 0
        return retries, number % FAIL_EVERY == 2


def _llm_calls(sim: Simulation, act: hooks.ActorSpan) -> None:
    rng = sim.rng
    for _ in range(rng.randint(1, 3)):
        provider, model = rng.choice(MODELS)
        retries, fails = sim.next_llm_call()
        try:
            streaming = rng.random() < 0.3
            with act.llm(provider, model, retry_count=retries, streaming=streaming) as call:
                time.sleep(rng.uniform(0.0005, 0.002))
                call.update(latency_ms=round(rng.lognormvariate(6.5, 0.6), 1))
                if fails:
                    raise RateLimitError(f"{provider} rate limit reached for {model}")
                call.update(
                    prompt_tokens=rng.randint(200, 4000),
                    completion_tokens=rng.randint(20, 800),
                    tool_calls=rng.sample(TOOLS, rng.randint(0, 2)),
                )
        except RateLimitError:
            pass  # the trace carries the error; the agent moves on


def _use_tool(rng: random.Random) -> None:
    try:
        with hooks.tool(rng.choice(TOOLS)):
            time.sleep(rng.uniform(0.0002, 0.001))
            if rng.random() < TOOL_FAILURE_RATE:
                raise ToolError("tool failed")
    except ToolError:
        pass


def run_plan(sim: Simulation, plan_id: str) -> None:
    """One plan as an agent would run it, recorded through the hooks."""
    rng = sim.rng
    with hooks.plan(plan_id):
        with hooks.phase("prepare"):
            with hooks.context_build(rng.choice(("hot", "warm", "cold"))):
                time.sleep(rng.uniform(0.0002, 0.001))
            hooks.set_hot_context_tokens(rng.randint(1_000, 32_000))
            with hooks.index_query(rng.choice(("text", "vector", "graph"))):
                time.sleep(rng.uniform(0.0002, 0.001))
        with hooks.phase("execute"):
            for _ in range(rng.randint(1, 3)):
                with hooks.decision(), hooks.actor(rng.choice(ACTORS)) as act:
                    _llm_calls(sim, act)
                    _use_tool(rng)
            with hooks.sandbox("create"):
                pass
            with hooks.sandbox("commit" if rng.random() < 0.8 else "rollback"):
                pass
        if rng.random() < 0.2:
            with hooks.plan(f"{plan_id}.child"), hooks.actor("reviewer") as act:
                _llm_calls(sim, act)


def run_agent(
    settings: DemoSettings,
    agent: int,
    reports: multiprocessing.queues.Queue[AgentReport],
    stop: EventLike,
) -> None:
    """The body of one agent process: run plans until done or told to stop, flush,
    report what the emitter did."""
    emitter = configure(redis_url=settings.redis_url, namespace=settings.namespace)
    sim = Simulation(random.Random(f"{settings.run_id}-{agent}"))
    deadline = None if settings.seconds is None else time.monotonic() + settings.seconds
    plans = 0
    while not stop.is_set() and (
        plans < settings.plans if deadline is None else time.monotonic() < deadline
    ):
        run_plan(sim, f"{settings.run_id}-a{agent}-p{plans}")
        plans += 1
    emitter.close(AGENT_CLOSE_TIMEOUT_S)
    stats = emitter.stats
    reports.put(AgentReport(agent, plans, stats.sent, stats.dropped))


def send_malformed(client: redis.Redis, keys: Keys, run_id: str, count: int) -> int:
    """XADD one batch past the emitter, as a buggy or hostile producer might: every
    other record has a negative token count. The worker stores the good ones and
    dead-letters the others with the reason; returns the records written."""
    lines = []
    for position in range(count):
        trace = LLMTrace(
            provider="acme",
            model="acme-reasoner-2",
            plan_id=f"{run_id}-handwritten",
            prompt_tokens=100,
            completion_tokens=10,
        )
        line = encode_record(trace)
        if position % 2 == 0:
            record = orjson.loads(line)
            record["prompt_tokens"] = -100
            line = orjson.dumps(record)
        lines.append(line)
    if lines:
        fields: dict[Any, Any] = encode_lines(Kind.TRACE, lines, new_batch_id())
        with translate_redis_errors("writing the malformed batch"):
            client.xadd(keys.traces, fields)
    return len(lines)


# -- counting -----------------------------------------------------------------------


def count_rows(pool: ConnectionPool, run_id: str) -> tuple[int, int]:
    """Rows of this run in llm_traces and metric_samples (by the run id prefix)."""
    prefix = f"{run_id}-"
    query = sql.SQL(
        "SELECT (SELECT count(*) FROM {traces} WHERE left(plan_id, %(n)s) = %(p)s), "
        "(SELECT count(*) FROM {samples} WHERE left(plan_id, %(n)s) = %(p)s)"
    ).format(traces=sql.Identifier(TRACES_TABLE), samples=sql.Identifier(SAMPLES_TABLE))
    with database.connection(pool) as conn:
        row = conn.execute(query, {"n": len(prefix), "p": prefix}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])  # type: ignore[call-overload]


def dead_letter_records(letter: DeadLetter) -> int:
    """How many records a dead letter stands for: one, or a whole entry's count."""
    if letter.record is not None:
        return 1
    count = (letter.original or {}).get(FIELD_COUNT, b"")
    return int(count) if count.isdigit() else 1


class DeadLetterCounter:
    """Counts records dead-lettered by the persist group since the run started."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._stream = keys.dead_letters(PERSIST_GROUP)
        with translate_redis_errors("reading dead letters"):
            last: Any = client.xrevrange(self._stream, count=1)
        self._after = last[0][0].decode() if last else "0-0"

    def letters(self) -> list[DeadLetter]:
        with translate_redis_errors("reading dead letters"):
            rows: Any = self._client.xrange(self._stream, min=f"({self._after}")
        return [DeadLetter.from_fields(fields) for _, fields in rows]

    def records(self) -> int:
        return sum(dead_letter_records(letter) for letter in self.letters())


class LiveFigures:
    """This run's share of the namespace's live counters: records the emitters put into
    Redis, cost of the run's plans, LLM errors and retries (less what was there before)."""

    def __init__(self, client: redis.Redis, keys: Keys, run_id: str) -> None:
        self._client = client
        self._keys = keys
        self._plan_prefix = f"{run_id}-"
        self._baseline = self._read()

    def _read(self) -> tuple[int, int, int]:
        with translate_redis_errors("reading the emitter figures"):
            raw = self._client.hget(self._keys.emitter, EMITTER_RECORDS)
        errors = read_live(self._client, self._keys, MetricKey.LLM_ERRORS_COUNT)
        retries = read_live(self._client, self._keys, MetricKey.LLM_RETRIES_COUNT)
        return (
            int(raw or 0),
            sum(int(series.sum) for series in errors),
            sum(int(series.sum) for series in retries),
        )

    def read(self) -> tuple[int, float, int, int]:
        """(records sent, cost in USD, LLM errors, LLM retries) since the run started."""
        sent, errors, retries = self._read()
        cost = total_cost_usd(self._client, self._keys, prefix=self._plan_prefix)
        base_sent, base_errors, base_retries = self._baseline
        return sent - base_sent, cost, errors - base_errors, retries - base_retries


# -- the run ------------------------------------------------------------------------


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
    """Run the fleet and a worker, calling ``show`` with fresh figures a few times a
    second, and count what ended where."""
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
        counters = _Counters(
            pool,
            settings.run_id,
            LiveFigures(client, keys, settings.run_id),
            DeadLetterCounter(client, keys),
        )
        since = datetime.now(UTC)
        with _worker(settings) as worker_check:
            handwritten = send_malformed(client, keys, settings.run_id, settings.malformed)
            counters.handwritten = handwritten
            reports = _run_fleet(settings, counters, show, worker_check)
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
        progress.dead_letters,
        reasons,
        tuple(costs),
        time.monotonic() - started,
    )


@dataclass
class _Counters:
    """Where the progress figures come from, together."""

    pool: ConnectionPool
    run_id: str
    live: LiveFigures
    dead: DeadLetterCounter
    #: Records written past the emitters, which their figures do not count.
    handwritten: int = 0

    def progress(self, running: int, sent: int | None = None) -> Progress:
        """Fresh figures; ``sent`` from the agents' own reports once they all reported."""
        traces, samples = count_rows(self.pool, self.run_id)
        live_sent, cost, errors, retries = self.live.read()
        return Progress(
            running,
            live_sent + self.handwritten if sent is None else sent,
            traces,
            samples,
            self.dead.records(),
            cost,
            errors,
            retries,
        )


class EventLike(Protocol):
    """What an agent needs of its stop event (a ``multiprocessing`` Event)."""

    def is_set(self) -> bool: ...


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
    counters: _Counters,
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
            target=run_agent, args=(settings, agent, reports, stop), name=f"agent-{agent}"
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
