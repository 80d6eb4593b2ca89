"""The queries the CLI and the dashboard run over a time range read only the daily
partitions of that range: a private PostgreSQL with ``auto_explain`` logs the plan
of every statement those functions send, and the test reads which partitions each
plan scans."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleettrace_worker.serve.dashboard import performance, queries
from fleettrace_worker.serve.dashboard.plan_search import PlanSearch, search_plans
from fleettrace_worker.store import database, migrations, partitions
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.store.trace_filter import TraceFilter
from tests.factories import llm_trace
from tests.servers import PrivatePostgres

NOW = datetime.now(UTC)
TODAY = NOW.date()
NS = "pruned"
_RELATION_RE = re.compile(r'"Relation Name": "([a-z0-9_]+)"')


def _day(offset: int) -> datetime:
    return partitions.day_start(TODAY + timedelta(days=offset))


def _name(offset: int) -> str:
    return partitions.partition_name("llm_traces", TODAY + timedelta(days=offset))


@pytest.fixture
def explained() -> Iterator[PrivatePostgres]:
    """A private server that logs the plan of every statement (JSON), with days of
    calls from six days ago to tomorrow, each day in its own partition."""
    server = PrivatePostgres(
        options={
            "shared_preload_libraries": "auto_explain",
            "auto_explain.log_min_duration": "0",
            "auto_explain.log_format": "json",
        }
    )
    server.start()
    try:
        with psycopg.connect(server.url) as conn:
            migrations.migrate(conn)
            partitions.ensure(conn, days_ahead=6, today=TODAY - timedelta(days=5))
        with database.create_pool(server.url, min_size=1, max_size=1) as pool:
            LLMTraceRepository(pool).store(
                [llm_trace(started_at=_day(d) + timedelta(hours=h)) for d in range(-6, 1)
                 for h in (1, 13)],
                namespace=NS,
            )  # fmt: skip
        yield server
    finally:
        server.close()


def scanned(server: PrivatePostgres, call: Callable[[], object]) -> set[str]:
    """The llm_traces partitions the plans of the statements ``call`` sent read."""
    log = server.dir / "postgres.log"
    before = log.stat().st_size
    call()
    text = log.read_bytes()[before:].decode()
    assert "plan:" in text, text[:2000]
    relations = set(_RELATION_RE.findall(text))
    return {r for r in relations if r.startswith("llm_traces")}


@pytest.mark.slow
def test_time_ranged_reads_scan_only_the_partitions_of_their_range(
    explained: PrivatePostgres,
) -> None:
    url = explained.url
    # Two days ago to one day ago: exactly one day's partition.
    span = queries.TimeRange(_day(-2), _day(-1), "1d")
    one_day = {_name(-2)}
    reads: dict[str, Callable[[], object]] = {
        "dashboard cost table": lambda: queries.cost_table(url, NS, "model", span, 10),
        "dashboard cost series": lambda: queries.cost_series(url, NS, "model", span),
        "dashboard plans": lambda: search_plans(url, PlanSearch(NS, span), after=None, limit=5),
        "dashboard latency": lambda: performance.latency_table(url, NS, span),
        "dashboard latency series": lambda: performance.latency_series(url, NS, span),
    }
    with database.create_pool(url, min_size=1, max_size=1) as pool:
        repo = LLMTraceRepository(pool)
        where = TraceFilter(since=span.start, until=span.end, namespace=NS)
        reads |= {
            "traces list": lambda: repo.query(where, limit=5),
            "traces list count": lambda: repo.count(where),
            "traces cost": lambda: repo.cost_summary(["model", "day"], where),
        }
        for what, call in reads.items():
            assert scanned(explained, call) == one_day, what
        # Without a time range every day is read: the log does show what a plan scans.
        assert {_name(d) for d in range(-6, 1)} <= scanned(
            explained, lambda: repo.count(TraceFilter(namespace=NS))
        )
        # --since alone (an age): from that day on, not the older days.
        recent = TraceFilter(since=_day(-1) + timedelta(hours=2), namespace=NS)
        found = scanned(explained, lambda: repo.query(recent, limit=50))
        # Open above: the days made ahead and the default partition may hold such rows.
        assert {_name(-1), _name(0)} <= found
        assert not found & {_name(d) for d in range(-6, -1)}
    # The overview's last 24 hours: today's and yesterday's partitions at most.
    found = scanned(explained, lambda: queries.recent_activity(url, NS, now=NOW))
    assert found <= {_name(-1), _name(0)} and _name(0) in found
