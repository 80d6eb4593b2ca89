"""Retention against the machine's PostgreSQL: exactly the rows older than the cutoff
go, from every table (calls, samples, tool calls, plan records), in batches; and the
durations people type are read right."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from fleettrace.errors import ConfigurationError
from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.cli.durations import parse_duration, parse_time
from fleettrace_worker.store import database, migrations, retention
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.factories import llm_trace, metric_sample

CUTOFF = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    with database.create_pool(database_url, min_size=1, max_size=2) as made:
        migrations.migrate(made)
        yield made


def _fill(pool: ConnectionPool, old: int, new: int) -> tuple[set[uuid.UUID], list[LLMTrace]]:
    """``old`` traces and samples before the cutoff, ``new`` at or after it."""
    old_traces = [
        llm_trace(cost_usd=0.01, started_at=CUTOFF - timedelta(days=1, microseconds=i))
        for i in range(old)
    ]
    old_traces[0] = llm_trace(cost_usd=0.01, started_at=CUTOFF - timedelta(microseconds=1))
    new_traces = [
        llm_trace(cost_usd=0.01, started_at=CUTOFF + timedelta(seconds=i)) for i in range(new)
    ]
    batch = uuid.uuid4().hex
    samples = [
        (
            batch,
            i,
            metric_sample(
                key=MetricKey.PLAN_COST_USD,
                labels={"plan": "k"},
                value=1.0,
                observed_at=t.started_at,
            ),
        )
        for i, t in enumerate(old_traces + new_traces)
    ]
    at = [t.started_at for t in old_traces + new_traces]
    tools = [ToolCall(tool="search", started_at=when) for when in at]
    plans = [
        PlanRecord(
            plan_id=f"p-{i}",
            root_plan_id=f"p-{i}",
            root_started_at=when,
            started_at=when,
            ended_at=when,
        )
        for i, when in enumerate(at)
    ]
    LLMTraceRepository(pool).store(old_traces + new_traces, samples, tool_calls=tools, plans=plans)
    return {t.trace_id for t in old_traces}, new_traces


def _remaining(url: str) -> tuple[set[uuid.UUID], list[datetime]]:
    with psycopg.connect(url) as conn:
        traces = {row[0] for row in conn.execute("SELECT trace_id FROM llm_traces")}
        observed = [
            row[0] for row in conn.execute("SELECT observed_at FROM metric_samples ORDER BY 1")
        ]
    return traces, observed


def test_prune_removes_exactly_the_rows_before_the_cutoff(
    pool: ConnectionPool, database_url: str
) -> None:
    _, new = _fill(pool, old=50, new=20)

    report = retention.prune(pool, CUTOFF, batch_rows=7)

    assert (report.traces, report.samples, report.tool_calls, report.plans) == (50, 50, 50, 50)
    assert not report.dry_run and report.cutoff == CUTOFF
    # 50 rows by 7: seven full batches and one of 1, per table.
    assert report.batches == 32
    assert report.longest_batch_s > 0  # measured, not left at its initial 0
    traces, observed = _remaining(database_url)
    assert traces == {t.trace_id for t in new}
    with psycopg.connect(database_url) as conn:
        for table in ("tool_calls", "plans"):
            kept = [row[0] for row in conn.execute(f"SELECT started_at FROM {table} ORDER BY 1")]
            assert kept == sorted(t.started_at for t in new)
    # The row exactly at the cutoff stays: "older than" is strict.
    assert observed == sorted(t.started_at for t in new)
    assert min(observed) == CUTOFF


def test_prune_twice_removes_nothing_more(pool: ConnectionPool, database_url: str) -> None:
    _fill(pool, old=5, new=5)
    retention.prune(pool, CUTOFF)
    again = retention.prune(pool, CUTOFF)
    assert (again.traces, again.samples, again.tool_calls, again.plans) == (0, 0, 0, 0)
    assert again.batches == 4
    assert len(_remaining(database_url)[0]) == 5


def test_a_dry_run_counts_and_removes_nothing(pool: ConnectionPool, database_url: str) -> None:
    old, new = _fill(pool, old=12, new=3)

    report = retention.prune(pool, CUTOFF, dry_run=True)

    assert (report.traces, report.samples, report.dry_run) == (12, 12, True)
    assert (report.tool_calls, report.plans) == (12, 12)
    assert report.batches == 0
    assert _remaining(database_url)[0] == old | {t.trace_id for t in new}


def test_writes_go_on_while_a_prune_batch_is_open(pool: ConnectionPool, database_url: str) -> None:
    # A prune batch holds row locks on the rows it deletes, nothing more: a batch left
    # open does not stop new rows from being stored.
    _fill(pool, old=5, new=0)
    with psycopg.connect(database_url) as pruning:
        pruning.execute(
            "DELETE FROM llm_traces WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM llm_traces WHERE started_at < %s LIMIT 3))",
            (CUTOFF,),
        )
        with psycopg.connect(database_url, autocommit=True) as other:
            other.execute("SET lock_timeout = '2s'")
            other.execute(
                "INSERT INTO llm_traces (trace_id, provider, model, prompt_tokens, "
                "completion_tokens, latency_ms, tool_calls, streaming, retry_count, started_at, "
                "namespace) "
                "VALUES (gen_random_uuid(), 'p', 'm', 0, 0, 0, '{}', false, 0, now(), 'n')"
            )
        pruning.rollback()
    assert len(_remaining(database_url)[0]) == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_rows": 0}, "batch_rows"),
        ({"cutoff": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
def test_prune_refuses_bad_arguments(
    pool: ConnectionPool, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"cutoff": CUTOFF, **kwargs}
    cutoff = arguments.pop("cutoff")
    with pytest.raises(ValueError, match=message):
        retention.prune(pool, cutoff, **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("90m", 5400),
        ("12h", 43_200),
        ("30d", 2_592_000),
        ("2w", 1_209_600),
        (" 7 d ", 604_800),
        ("0s", 0),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "1.5h", "-1d", "30dd", "1e3s", "P30D"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a duration: use a whole number"):
        parse_duration(text)


def test_times_are_ages_or_iso_8601() -> None:
    now = datetime(2026, 5, 5, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now=now) == datetime(2026, 5, 5, 10, 0, tzinfo=UTC)
    assert parse_time("2026-03-01T12:00:00Z") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_time("2026-03-01T14:00:00+02:00") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    # No zone named: UTC, as every stored time is.
    assert parse_time("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_time("2026-03-01T12:00:00Z").tzinfo is UTC
    before = datetime.now(UTC)
    ago = parse_time("5m")
    after = datetime.now(UTC)
    assert before - timedelta(minutes=5) <= ago <= after - timedelta(minutes=5)
    with pytest.raises(ConfigurationError, match=r"neither a duration .* nor an ISO 8601 time"):
        parse_time("yesterday")
