"""The figures of a demo run and its proof: every record the agents' emitters put
into Redis (and every record written past them) is a row or a dead letter.

Every plan id of a run starts with the run id, and so do the ``plan_id`` of every
trace, metric sample, tool call and plan record, which is how the rows of one run are
told apart from other traffic in a shared database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace.keys import EMITTER_RECORDS, FIELD_COUNT, Keys
from fleettrace.live import read_live
from fleettrace.metrics import MetricKey
from fleettrace.plans import total_cost_usd
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.demo.settings import AgentReport, DemoSettings
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store import database
from fleettrace_worker.store.repository import SAMPLES_TABLE, TRACES_TABLE
from fleettrace_worker.store.trace_filter import CostRow
from fleettrace_worker.store.tree_store import PLANS_TABLE, TOOL_CALLS_TABLE
from fleettrace_worker.stream.deadletter import DeadLetter


@dataclass(frozen=True, slots=True)
class Progress:
    """The figures the progress display shows, read while the fleet runs."""

    agents_running: int
    sent: int
    traces_stored: int
    samples_stored: int
    #: Rows of the plan tree's tables: tool calls and plan records.
    tree_stored: int
    dead_letters: int
    cost_usd: float
    llm_errors: int
    llm_retries: int

    @property
    def stored(self) -> int:
        return self.traces_stored + self.samples_stored + self.tree_stored

    @property
    def in_flight(self) -> int:
        return max(self.sent - self.stored - self.dead_letters, 0)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The end of a run: what was sent, what is stored, and what it cost."""

    settings: DemoSettings
    agents: tuple[AgentReport, ...]
    #: Records written past the emitter by ``agents.send_malformed``.
    handwritten: int
    traces_stored: int
    samples_stored: int
    #: Rows of the plan tree's tables: tool calls and plan records.
    tree_stored: int
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
        return self.traces_stored + self.samples_stored + self.tree_stored

    @property
    def nothing_lost(self) -> bool:
        return self.sent == self.stored + self.dead_letters


def count_rows(pool: ConnectionPool, run_id: str) -> tuple[int, int, int]:
    """Rows of this run (by the run id prefix of their plan) in llm_traces, in
    metric_samples, and in the plan tree's tables (tool_calls and plans together)."""
    prefix = f"{run_id}-"
    count = sql.SQL("(SELECT count(*) FROM {} WHERE left(plan_id, %(n)s) = %(p)s)")
    query = sql.SQL("SELECT {}, {}, {} + {}").format(
        *(count.format(sql.Identifier(t)) for t in (TRACES_TABLE, SAMPLES_TABLE)),
        *(count.format(sql.Identifier(t)) for t in (TOOL_CALLS_TABLE, PLANS_TABLE)),
    )
    with database.connection(pool) as conn:
        row = conn.execute(query, {"n": len(prefix), "p": prefix}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])  # type: ignore[call-overload]


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


@dataclass
class Counters:
    """Where the progress figures come from, together."""

    pool: ConnectionPool
    run_id: str
    live: LiveFigures
    dead: DeadLetterCounter
    #: Records written past the emitters, which their figures do not count.
    handwritten: int = 0

    def progress(self, running: int, sent: int | None = None) -> Progress:
        """Fresh figures; ``sent`` from the agents' own reports once they all reported."""
        traces, samples, tree = count_rows(self.pool, self.run_id)
        live_sent, cost, errors, retries = self.live.read()
        return Progress(
            running,
            live_sent + self.handwritten if sent is None else sent,
            traces,
            samples,
            tree,
            self.dead.records(),
            cost,
            errors,
            retries,
        )
