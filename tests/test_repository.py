"""LLMTraceRepository against the machine's PostgreSQL: rows read back equal to what was
stored, idempotent writes, and queries checked against expectations computed here."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.repository import LLMTraceRepository, StoreResult
from fleettrace_worker.store.trace_filter import InvalidCursor, TraceFilter, decode_cursor
from tests.factories import llm_trace, metric_sample

BASE = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    with database.create_pool(database_url, min_size=1, max_size=2) as made:
        migrations.migrate(made)
        yield made


@pytest.fixture
def repo(pool: ConnectionPool) -> LLMTraceRepository:
    return LLMTraceRepository(pool)


#: Every field of a call set to a value that is easy to get subtly wrong (each call
#: still gets its own trace id).
AWKWARD_CALL = {
    "plan_id": "plan-ü-1",
    "decision_id": "decision 7",
    "actor": "planner",
    "prompt_tokens": 1_000_000_000,
    "completion_tokens": 17,
    "cost_usd": 0.1 + 0.2,
    "latency_ms": 1234.5678901234567,
    "tool_calls": ["search", "read 'file'", 'quote"d', "{braces}", "back\\slash"],
    "context_hash": "0123456789abcdef" * 4,
    "streaming": True,
    "retry_count": 3,
    "error": "RateLimitError: slow down\nsecond line\ttab",
    "started_at": BASE,
}


def _labels(key: MetricKey) -> dict[str, str]:
    return {name: f"{name}-value" for name in key.spec.labels}


#: A sample of llm.retries_count with every field set.
SAMPLE = {
    "key": MetricKey.LLM_RETRIES_COUNT,
    "labels": _labels(MetricKey.LLM_RETRIES_COUNT),
    "value": 2.5,
    "plan_id": "plan-1",
    "observed_at": BASE,
}


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_every_field_round_trips_exactly(repo: LLMTraceRepository) -> None:
    stored = [
        llm_trace(AWKWARD_CALL),
        llm_trace(
            AWKWARD_CALL,
            plan_id=None,
            decision_id=None,
            actor=None,
            cost_usd=None,
            tool_calls=[],
            context_hash=None,
            streaming=False,
            retry_count=0,
            error=None,
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=5e-324,
            started_at=datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        llm_trace(AWKWARD_CALL, cost_usd=0.0, latency_ms=86_400_000.0, error=""),
    ]
    assert repo.store(stored) == StoreResult(3, 0, 0, 0)

    for trace in stored:
        got = repo.get(trace.trace_id)
        assert got == trace
        assert got is not None
        assert got.started_at == trace.started_at
        assert got.started_at.microsecond == trace.started_at.microsecond
        assert got.cost_usd == trace.cost_usd
        assert got.latency_ms.hex() == trace.latency_ms.hex()


def test_an_unpriced_call_keeps_a_null_cost(repo: LLMTraceRepository, database_url: str) -> None:
    unpriced = LLMTrace(provider="nobody-knows", model="private-model", prompt_tokens=10)
    assert unpriced.cost_usd is None
    repo.store([unpriced])

    got = repo.get(unpriced.trace_id)
    assert got is not None and got.cost_usd is None and not got.cost_known
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT cost_usd IS NULL FROM llm_traces WHERE trace_id = %s", (unpriced.trace_id,)
        ).fetchone()
    assert row == (True,)


def test_get_of_an_unknown_id_is_none(repo: LLMTraceRepository) -> None:
    assert repo.get(uuid.uuid4()) is None


def test_storing_the_same_batch_twice_keeps_one_row_each(
    repo: LLMTraceRepository, database_url: str
) -> None:
    traces = [llm_trace(AWKWARD_CALL) for _ in range(50)]
    batch_id = uuid.uuid4().hex
    samples = [
        (batch_id, position, metric_sample(SAMPLE, value=float(position))) for position in range(20)
    ]

    assert repo.store(traces, samples) == StoreResult(50, 0, 20, 0)
    assert repo.store(traces, samples) == StoreResult(0, 50, 0, 20)

    assert count(database_url, "llm_traces") == 50
    assert count(database_url, "metric_samples") == 20


def test_a_batch_mixing_new_and_stored_rows_adds_only_the_new(
    repo: LLMTraceRepository, database_url: str
) -> None:
    old = [llm_trace(AWKWARD_CALL) for _ in range(10)]
    new = [llm_trace(AWKWARD_CALL, plan_id="fresh") for _ in range(7)]
    batch_id = uuid.uuid4().hex
    repo.store(old, [(batch_id, 0, metric_sample(SAMPLE))])

    mixed = old[:4] + new + old[4:]
    result = repo.store(
        mixed,
        [(batch_id, 0, metric_sample(SAMPLE)), (batch_id, 1, metric_sample(SAMPLE, value=9.0))],
    )

    assert result == StoreResult(7, 10, 1, 1)
    assert count(database_url, "llm_traces") == 17
    assert sorted(t.trace_id for t in repo.by_plan("fresh")) == sorted(t.trace_id for t in new)
    # The row that was there first is the one kept.
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT position, value FROM metric_samples ORDER BY position"
        ).fetchall()
    assert rows == [(0, 2.5), (1, 9.0)]


def test_duplicates_inside_one_batch_are_stored_once(
    repo: LLMTraceRepository, database_url: str
) -> None:
    trace = llm_trace(AWKWARD_CALL)
    batch_id = uuid.uuid4().hex
    result = repo.store(
        [trace, trace], [(batch_id, 3, metric_sample(SAMPLE)), (batch_id, 3, metric_sample(SAMPLE))]
    )
    assert result == StoreResult(1, 1, 1, 1)
    assert count(database_url, "llm_traces") == 1
    assert repo.get(trace.trace_id) == trace


def test_redelivery_after_a_merge_uses_the_staging_tables_again(
    pool: ConnectionPool, database_url: str
) -> None:
    # The temporary staging tables outlive one call on a pooled connection and are
    # emptied at commit: a second merge on the same connection sees only its own rows.
    single = database.create_pool(database_url, min_size=1, max_size=1)
    repo = LLMTraceRepository(single)
    first = [llm_trace(AWKWARD_CALL) for _ in range(3)]
    repo.store(first)
    assert repo.store([*first, llm_trace(AWKWARD_CALL)]) == StoreResult(1, 3, 0, 0)
    assert repo.store([*first, llm_trace(AWKWARD_CALL), llm_trace(AWKWARD_CALL)]) == StoreResult(
        2, 3, 0, 0
    )
    assert count(database_url, "llm_traces") == 6
    with database.connection(single) as conn:
        staged = conn.execute("SELECT count(*) FROM fleettrace_traces_staging").fetchone()
    assert staged == (0,)
    single.close()


def test_samples_round_trip_with_their_labels(repo: LLMTraceRepository, database_url: str) -> None:
    batch_id = uuid.uuid4().hex
    stored = [
        (
            batch_id,
            0,
            metric_sample(
                SAMPLE,
                key=MetricKey.TOOL_INVOCATION_DURATION_MS,
                labels=_labels(MetricKey.TOOL_INVOCATION_DURATION_MS),
                value=0.1 + 0.2,
            ),
        ),
        (
            batch_id,
            5,
            metric_sample(
                SAMPLE,
                key=MetricKey.PLAN_COST_USD,
                labels=_labels(MetricKey.PLAN_COST_USD),
                plan_id=None,
                value=-0.0,
            ),
        ),
    ]
    assert repo.store([], stored) == StoreResult(0, 0, 2, 0)

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT batch_id, position, key, labels, value, plan_id, observed_at "
            "FROM metric_samples ORDER BY position"
        ).fetchall()
    expected = [
        (uuid.UUID(b), p, s.key.value, s.labels, s.value, s.plan_id, s.observed_at)
        for b, p, s in stored
    ]
    assert rows == expected


def test_an_empty_store_writes_nothing(repo: LLMTraceRepository, database_url: str) -> None:
    assert repo.store([], []) == StoreResult(0, 0, 0, 0)
    assert count(database_url, "llm_traces") == 0


def test_by_plan_orders_by_start_then_id(repo: LLMTraceRepository) -> None:
    same_time = [llm_trace(AWKWARD_CALL, plan_id="p", started_at=BASE) for _ in range(5)]
    earlier = llm_trace(AWKWARD_CALL, plan_id="p", started_at=BASE - timedelta(microseconds=1))
    other = llm_trace(AWKWARD_CALL, plan_id="q")
    repo.store([*same_time, other, earlier])

    expected = [earlier, *sorted(same_time, key=lambda t: t.trace_id)]
    assert repo.by_plan("p") == expected
    assert repo.by_plan("missing") == []


def _fleet(n: int, seed: int = 7) -> list[LLMTrace]:
    rng = random.Random(seed)
    traces = []
    for i in range(n):
        provider, model = rng.choice(
            [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-x")]
        )
        traces.append(
            llm_trace(
                AWKWARD_CALL,
                trace_id=uuid.UUID(int=rng.getrandbits(128)),
                provider=provider,
                model=model,
                actor=rng.choice(["planner", "coder", None]),
                plan_id=rng.choice(["p1", "p2", "p3", None]),
                prompt_tokens=rng.randrange(0, 5000),
                completion_tokens=rng.randrange(0, 2000),
                cost_usd=rng.choice([None, rng.random() / 10]),
                latency_ms=rng.random() * 3000,
                error=rng.choice([None, None, None, "Timeout: x"]),
                # Some share a start time, so the trace id must break ties.
                started_at=BASE + timedelta(hours=rng.randrange(0, 72), microseconds=i % 3),
            )
        )
    return traces


def _newest_first(traces: list[LLMTrace]) -> list[LLMTrace]:
    return sorted(traces, key=lambda t: (t.started_at, t.trace_id), reverse=True)


def test_query_pages_through_everything_newest_first(repo: LLMTraceRepository) -> None:
    traces = _fleet(120)
    repo.store(traces)

    seen: list[LLMTrace] = []
    cursor = None
    for _ in range(100):
        page = repo.query(TraceFilter(), limit=13, after=cursor)
        assert len(page.items) <= 13
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == _newest_first(traces)


def test_a_page_that_ends_exactly_at_the_last_row_has_no_cursor(
    repo: LLMTraceRepository,
) -> None:
    traces = _fleet(10)
    repo.store(traces)
    page = repo.query(TraceFilter(), limit=10)
    assert page.items == _newest_first(traces)
    assert page.next_cursor is None


@pytest.mark.parametrize(
    ("where", "keep"),
    [
        (TraceFilter(provider="openai"), lambda t: t.provider == "openai"),
        (TraceFilter(model="gpt-4o-mini"), lambda t: t.model == "gpt-4o-mini"),
        (TraceFilter(actor="coder"), lambda t: t.actor == "coder"),
        (TraceFilter(plan_id="p2"), lambda t: t.plan_id == "p2"),
        (TraceFilter(errors_only=True), lambda t: t.error is not None),
        (
            TraceFilter(since=BASE + timedelta(hours=10), until=BASE + timedelta(hours=30)),
            lambda t: BASE + timedelta(hours=10) <= t.started_at < BASE + timedelta(hours=30),
        ),
        (
            TraceFilter(provider="openai", actor="planner", errors_only=True),
            lambda t: t.provider == "openai" and t.actor == "planner" and t.error is not None,
        ),
    ],
)
def test_query_filters(repo: LLMTraceRepository, where: TraceFilter, keep: object) -> None:
    traces = _fleet(150)
    repo.store(traces)
    expected = _newest_first([t for t in traces if keep(t)])  # type: ignore[operator]
    assert expected  # the fleet has rows of every kind

    seen: list[LLMTrace] = []
    cursor = None
    for _ in range(100):
        page = repo.query(where, limit=7, after=cursor)
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected


def test_query_refuses_a_bad_cursor_and_limit(repo: LLMTraceRepository) -> None:
    with pytest.raises(InvalidCursor, match="not one this command returned"):
        repo.query(TraceFilter(), after="not-a-cursor")
    with pytest.raises(ValueError, match="limit"):
        repo.query(TraceFilter(), limit=0)


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!", "bm8tYmFy", "MjAyNi0wMS0wMXx4", "MjAyNi0wMS0wMVQwMDowMDowMHwwMDA", "_w"],
)
def test_decode_cursor_refuses_what_it_did_not_make(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _expected_summary(traces: list[LLMTrace], group_by: list[str]) -> dict[tuple, dict]:
    def key_of(trace: LLMTrace) -> tuple:
        values = {
            "provider": trace.provider,
            "model": trace.model,
            "actor": trace.actor,
            "plan": trace.plan_id,
            "day": trace.started_at.date().isoformat(),
        }
        return tuple(values[name] for name in group_by)

    groups: dict[tuple, list[LLMTrace]] = defaultdict(list)
    for trace in traces:
        groups[key_of(trace)].append(trace)
    return {
        key: {
            "calls": len(members),
            "prompt_tokens": sum(t.prompt_tokens for t in members),
            "completion_tokens": sum(t.completion_tokens for t in members),
            "cost_usd": (
                sum(t.cost_usd for t in members if t.cost_usd is not None)
                if any(t.cost_usd is not None for t in members)
                else None  # nothing priced: unknown, not 0
            ),
            "unpriced_calls": sum(1 for t in members if t.cost_usd is None),
            "error_rate": sum(1 for t in members if t.error is not None) / len(members),
            "p50": _percentile([t.latency_ms for t in members], 0.5),
            "p95": _percentile([t.latency_ms for t in members], 0.95),
        }
        for key, members in groups.items()
    }


@pytest.mark.parametrize(
    "group_by",
    [[], ["model"], ["provider", "model"], ["actor", "plan"], ["day"], ["plan", "day", "model"]],
)
def test_cost_summary_matches_an_independent_computation(
    repo: LLMTraceRepository, group_by: list[str]
) -> None:
    traces = _fleet(300)
    repo.store(traces)

    rows = repo.cost_summary(group_by)
    expected = _expected_summary(traces, group_by)

    assert len(rows) == len(expected)
    # The most expensive first; groups with nothing priced last.
    costs = [r.cost_usd for r in rows]
    priced = [c for c in costs if c is not None]
    assert costs == sorted(priced, reverse=True) + [None] * (len(costs) - len(priced))
    for row in rows:
        assert list(row.group) == group_by
        want = expected[tuple(row.group[name] for name in group_by)]
        assert row.calls == want["calls"]
        assert row.prompt_tokens == want["prompt_tokens"]
        assert row.completion_tokens == want["completion_tokens"]
        assert row.total_tokens == want["prompt_tokens"] + want["completion_tokens"]
        assert row.unpriced_calls == want["unpriced_calls"]
        assert row.error_rate == pytest.approx(want["error_rate"], rel=1e-12)
        # Sums in a different order differ in the last bits only.
        if want["cost_usd"] is None:
            assert row.cost_usd is None
        else:
            assert row.cost_usd == pytest.approx(want["cost_usd"], rel=1e-9)
        assert row.latency_p50_ms == pytest.approx(want["p50"], rel=1e-12)
        assert row.latency_p95_ms == pytest.approx(want["p95"], rel=1e-12)


def test_cost_summary_honours_the_filter(repo: LLMTraceRepository) -> None:
    traces = _fleet(200)
    repo.store(traces)
    where = TraceFilter(provider="openai", since=BASE + timedelta(hours=24))
    chosen = [t for t in traces if t.provider == "openai" and t.started_at >= where.since]  # type: ignore[operator]

    rows = repo.cost_summary(["model"], where)

    expected = _expected_summary(chosen, ["model"])
    assert {row.group["model"]: row.calls for row in rows} == {
        key[0]: value["calls"] for key, value in expected.items()
    }


def test_cost_summary_of_nothing_is_empty(repo: LLMTraceRepository) -> None:
    assert repo.cost_summary([]) == []
    assert repo.cost_summary(["model"]) == []


@pytest.mark.parametrize("group_by", [["colour"], ["model", "model"]])
def test_cost_summary_refuses_unknown_groups(repo: LLMTraceRepository, group_by: list[str]) -> None:
    with pytest.raises(ValueError, match="group by must be distinct names among provider"):
        repo.cost_summary(group_by)


def test_tool_calls_round_trip_in_order_however_many(repo: LLMTraceRepository) -> None:
    many = [f"tool-{i}-ünïcødé-✓" for i in range(256)]
    stored = [
        llm_trace(AWKWARD_CALL, tool_calls=many),
        llm_trace(AWKWARD_CALL, tool_calls=["x" * 128, "y"]),
    ]
    repo.store(stored)
    for trace in stored:
        assert repo.get(trace.trace_id) == trace
    # The merge path writes the same bytes through the staging table.
    again = llm_trace(AWKWARD_CALL, tool_calls=list(reversed(many)))
    assert repo.store([*stored, again]) == StoreResult(1, 2, 0, 0)
    assert repo.get(again.trace_id) == again
