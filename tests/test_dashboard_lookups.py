"""The Plans page's prefix search matches plan ids that start with the prefix, its
``%``, ``_`` and ``\\`` taken literally (it is a LIKE pattern underneath, for the index)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleettrace_worker.serve.dashboard import queries
from fleettrace_worker.serve.dashboard.plan_search import PlanSearch, search_plans
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.factories import llm_trace

PLANS = ("run_1", "runX1", "run%2", "run-2", "r\\un", "rXun", "run_1.child", "RUN_1")


def test_a_plan_prefix_is_matched_literally(database_url: str) -> None:
    now = datetime.now(UTC)
    with database.create_pool(database_url, min_size=1, max_size=1) as pool:
        migrations.migrate(pool)
        LLMTraceRepository(pool).store(
            [llm_trace(plan_id=plan, started_at=now - timedelta(minutes=1)) for plan in PLANS],
            namespace="ns",
        )
    span = queries.TimeRange(now - timedelta(days=1), now, "24h")

    def found(prefix: str) -> list[str]:
        items, _ = search_plans(
            database_url, PlanSearch("ns", span, prefix=prefix), after=None, limit=50
        )
        return [item["plan_id"] for item in items]

    assert found("run_") == ["run_1", "run_1.child"]
    assert found("run%") == ["run%2"]
    assert found("r\\") == ["r\\un"]
    assert sorted(found("")) == sorted(PLANS)
    assert found("nothing") == []
