"""The dashboard's lookups stay on indexes over a million calls: every SQL statement
the plans list, a plan's tree, one call, the cost (table and chart) over a long range,
the Overview's recent calls and latency, and the Performance page's latency, tools and
metric-sample durations send is recorded as they run, then EXPLAINed, and none may read
a big table sequentially."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
import pytest
from psycopg import sql

from fleettrace_worker.serve.dashboard import performance, queries
from fleettrace_worker.serve.dashboard.plan_search import PlanSearch, search_plans
from fleettrace_worker.serve.dashboard.samples import SAMPLE_KEYS, sample_rows
from fleettrace_worker.store import database, migrations, partitions
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.store.tree_queries import TreeQueries
from tests import conftest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CALLS = 1_000_000
PLANS = 20_000
TOOLS = 200_000
SAMPLES = 300_000
DAYS = 90
NAMESPACE = "big"
BIG_TABLES = frozenset({"llm_traces", "tool_calls", "plans", "metric_samples"})
#: Made in the server, one INSERT ... SELECT each: the point is the read side. Keys are
#: time-ordered (from i), as UUIDv7 keys would be, so the fill takes seconds.
FILL = (
    """
    INSERT INTO llm_traces (trace_id, plan_id, decision_id, actor, provider, model,
        prompt_tokens, completion_tokens, cost_usd, latency_ms, tool_calls, streaming,
        retry_count, error, started_at, namespace, root_plan_id, root_started_at)
    SELECT lpad(to_hex(i), 32, '0')::uuid, 'plan-' || (i %% %(plans)s), 'd-' || i,
        (ARRAY['planner', 'coder', 'reviewer'])[1 + i %% 3],
        (ARRAY['openai', 'anthropic', 'selfhosted'])[1 + i %% 3],
        (ARRAY['gpt-4o', 'claude-sonnet-4-5', 'house-llm', 'gpt-4o-mini'])[1 + i %% 4],
        100 + i %% 900, 20 + i %% 300,
        CASE WHEN i %% 3 = 2 THEN NULL ELSE (i %% 1000) / 100000.0 END,
        10 + i %% 2000, '{}', false, i %% 5, CASE WHEN i %% 50 = 0 THEN 'timeout' END,
        %(now)s - make_interval(secs => (1 - i::float8 / %(calls)s) * %(days)s * 86400),
        %(ns)s, 'plan-' || (i %% %(plans)s), %(now)s - make_interval(days => %(days)s)
    FROM generate_series(1, %(calls)s) AS i
    """,
    """
    INSERT INTO tool_calls (call_id, tool, plan_id, root_plan_id, root_started_at,
        plan_path, started_at, duration_ms, outcome, namespace)
    SELECT lpad(to_hex(i), 32, '0')::uuid, 'search', 'plan-' || (i %% %(plans)s),
        'plan-' || (i %% %(plans)s), %(now)s - make_interval(days => %(days)s), '{}',
        %(now)s - make_interval(secs => (1 - i::float8 / %(tools)s) * %(days)s * 86400),
        1.5, 'ok', %(ns)s
    FROM generate_series(1, %(tools)s) AS i
    """,
    """
    INSERT INTO plans (record_id, plan_id, root_plan_id, root_started_at, plan_path,
        started_at, ended_at, duration_ms, status, phases_ms, namespace)
    SELECT lpad(to_hex(i), 32, '0')::uuid, 'plan-' || i, 'plan-' || i,
        %(now)s - make_interval(days => %(days)s), '{}',
        %(now)s - make_interval(days => %(days)s), %(now)s, 1000, 'ok', '{}', %(ns)s
    FROM generate_series(0, %(plans)s - 1) AS i
    """,
    """
    INSERT INTO metric_samples (batch_id, position, key, labels, value, observed_at,
        namespace)
    SELECT lpad(to_hex(i / 100), 32, '0')::uuid, i %% 100,
        (ARRAY['context.build_duration_ms', 'index.query_duration_ms',
               'sandbox.operation_duration_ms', 'tool.invocation_duration_ms'])[1 + i %% 4],
        '{}', 1 + i %% 500,
        %(now)s - make_interval(secs => (1 - i::float8 / %(samples)s) * %(days)s * 86400),
        %(ns)s
    FROM generate_series(1, %(samples)s) AS i
    """,
)


@pytest.fixture(scope="module")
def big_database() -> Iterator[str]:
    """One database for the module: a million calls over 90 days, their plans and tools."""
    admin = conftest.PG_ADMIN_URL
    name = f"fleettrace_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rsplit('/', 1)[0]}/{name}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.migrate(conn)
            conn.execute("SET synchronous_commit = off")
            bound = {
                "plans": PLANS,
                "calls": CALLS,
                "tools": TOOLS,
                "samples": SAMPLES,
                "days": DAYS,
                "ns": NAMESPACE,
                "now": datetime.now(UTC),
            }
            for statement in FILL:
                conn.execute(statement, bound)
            conn.execute("VACUUM ANALYZE")
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _table_of(relation: str) -> str:
    """The record table a relation belongs to: itself, or the table a partition of it
    (``_pYYYYMMDD``, ``_default``, ``_legacy``: schema 8) is part of."""
    return re.sub(r"_(p\d{8}|default|legacy)$", "", relation)


#: A sequential scan of a relation this small (an empty or nearly empty daily partition,
#: which the planner rightly reads whole) is no sign of a missing index.
SMALL_BYTES = 1 << 20


def _seq_scans(
    plan: dict[str, Any], sizes: dict[str, int], whole: frozenset[str] = frozenset()
) -> list[str]:
    """The record tables a plan reads sequentially, through a partition of some size
    that is not one of ``whole`` (the daily partitions a recent read may read whole)."""
    found = []
    relation = str(plan.get("Relation Name", ""))
    if (
        plan.get("Node Type") == "Seq Scan"
        and _table_of(relation) in BIG_TABLES
        and sizes.get(relation, 0) > SMALL_BYTES
        and relation not in whole
    ):
        found.append(_table_of(relation))
    for child in plan.get("Plans", []):
        found += _seq_scans(child, sizes, whole)
    return found


#: The reads of the last 24 hours (the Overview's recent calls, the Performance page
#: over a day), which may read today's and yesterday's partitions whole: a range of a
#: day covers most of their rows (all of today's), and the planner rightly reads them
#: in order rather than through an index. Never an older day's partition; the last
#: hour's latency is not among them (it must take the index).
RECENT: Final = (
    "calls of the last hour, today and 24 hours",
    "latency chart, 24 hours",
    "tool table, 24 hours",
    "sample durations, 24 hours",
    "sample chart, 24 hours",
)


def _recent_days(now: datetime) -> frozenset[str]:
    days = (now.date(), now.date() - timedelta(days=1))
    return frozenset(partitions.partition_name(t, d) for t in BIG_TABLES for d in days)


def test_no_dashboard_lookup_reads_a_big_table_sequentially(
    big_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[Any, Any]] = []
    execute = psycopg.Connection.execute

    def recording(self: psycopg.Connection[Any], query: Any, params: Any = None, **kw: Any) -> Any:
        sent.append((query, params))
        return execute(self, query, params, **kw)

    now = datetime.now(UTC)
    long_range = queries.TimeRange(now - timedelta(days=DAYS), now, "90d")
    last_hour = queries.TimeRange(now - timedelta(hours=1), now, "1h")
    last_day = queries.TimeRange(now - timedelta(days=1), now, "24h")
    with database.create_pool(big_database, min_size=1, max_size=2) as pool:
        monkeypatch.setattr(psycopg.Connection, "execute", recording)
        lookups = {
            "plans list": lambda: search_plans(
                big_database, PlanSearch(NAMESPACE, long_range), after=None, limit=100
            ),
            "plans list, next page": lambda: search_plans(
                big_database, PlanSearch(NAMESPACE, long_range), after="plan-5000", limit=100
            ),
            "plans list, by prefix": lambda: search_plans(
                big_database,
                PlanSearch(NAMESPACE, long_range, prefix="plan-1234"),
                after=None,
                limit=100,
            ),
            "plan tree": lambda: TreeQueries(pool, namespace=NAMESPACE).tree("plan-777"),
            "one call": lambda: LLMTraceRepository(pool).get_stored(
                uuid.UUID(int=123_456), namespace=NAMESPACE
            ),
            "cost over 90 days": lambda: queries.cost_table(
                big_database, NAMESPACE, "model", long_range, 100
            ),
            "cost chart over 90 days": lambda: queries.cost_series(
                big_database, NAMESPACE, "provider", long_range
            ),
            "calls of the last hour, today and 24 hours": lambda: queries.recent_activity(
                big_database, NAMESPACE, now, day_start=now - timedelta(hours=20)
            ),
            "latency by model, last hour": lambda: performance.latency_table(
                big_database, NAMESPACE, last_hour
            ),
            "latency chart, 24 hours": lambda: performance.latency_series(
                big_database, NAMESPACE, last_day
            ),
            "tool table, 24 hours": lambda: performance.tool_table(
                big_database, NAMESPACE, last_day
            ),
            "sample durations, 24 hours": lambda: sample_rows(big_database, NAMESPACE, last_day),
            "sample chart, 24 hours": lambda: sample_rows(
                big_database, NAMESPACE, last_day, step_s=last_day.step_s
            ),
        }
        statements: dict[str, list[tuple[Any, Any]]] = {}
        answers: dict[str, Any] = {}
        for name, lookup in lookups.items():
            sent.clear()
            answers[name] = lookup()
            statements[name] = [(q, p) for q, p in sent if _reads_big_table(q)]
        monkeypatch.undo()
    # The lookups found what was filled.
    assert len(answers["plans list"][0]) == 100
    assert answers["plans list, by prefix"][0][0]["plan_id"] == "plan-1234"
    assert answers["plan tree"] is not None
    assert answers["one call"] is not None
    raw = queries.cost_table(big_database, NAMESPACE, "model", long_range, 100, use_rollup=False)
    assert [(i["key"], i["calls"]) for i in answers["cost over 90 days"]] == [
        (i["key"], i["calls"]) for i in raw
    ]
    assert sum(item["calls"] for item in raw) > CALLS - 100  # the range's edge drops a few
    assert sum(p["calls"] for p in answers["cost chart over 90 days"]) == sum(
        item["calls"] for item in raw
    )
    # About 1/90 of the rows a day: the recent reads found theirs.
    assert answers["calls of the last hour, today and 24 hours"][2]["calls"] > CALLS // 100
    assert sum(m["calls"] for m in answers["latency by model, last hour"]) > CALLS // 3000
    assert [m["key"] for m in answers["sample durations, 24 hours"]] == list(SAMPLE_KEYS)
    assert sum(m["samples"] for m in answers["sample chart, 24 hours"]) == sum(
        m["samples"] for m in answers["sample durations, 24 hours"]
    )

    with psycopg.connect(big_database) as conn:
        sizes = dict(
            conn.execute(
                "SELECT relname::text, pg_relation_size(oid) FROM pg_class WHERE relkind = 'r'"
            ).fetchall()
        )
        # The check sees a sequential scan where there is one.
        [[plan]] = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT count(*) FROM llm_traces WHERE latency_ms > 5"
        ).fetchall()
        assert "llm_traces" in _seq_scans(plan[0]["Plan"], sizes)
        for name, sent_statements in statements.items():
            assert sent_statements, name
            for query, params in sent_statements:
                explain = (
                    sql.SQL("EXPLAIN (FORMAT JSON) ") + query
                    if isinstance(query, sql.Composable)
                    else "EXPLAIN (FORMAT JSON) " + query
                )
                [[plan]] = conn.execute(explain, params).fetchall()
                text = query.as_string(conn) if isinstance(query, sql.Composable) else query
                whole = _recent_days(now) if name in RECENT else frozenset()
                assert _seq_scans(plan[0]["Plan"], sizes, whole) == [], f"{name}: {text}"


def _reads_big_table(query: Any) -> bool:
    text = str(query) if not isinstance(query, sql.Composable) else repr(query)
    return any(table in text for table in BIG_TABLES)
