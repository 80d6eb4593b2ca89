"""Schema version 5 (the plan tree) against the machine's PostgreSQL, on a database
holding rows of version 3: applied once from two processes at once, and again with
nothing to do; the old rows read back unplaced (no root, empty path) and still show
as their plan's tree; new rows of every tree table round-trip; a tree is read on
its indexes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.store.tree_queries import TreeQueries
from tests.factories import llm_trace
from tests.worker_helpers import at_schema_version, migrate_from_processes

AT = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
V3_COLUMNS = (
    "trace_id, plan_id, decision_id, actor, provider, model, prompt_tokens, "
    "completion_tokens, cost_usd, latency_ms, tool_calls, context_hash, streaming, "
    "retry_count, error, started_at, cache_read_tokens, producer, namespace"
)


def _at_version_three(url: str) -> list[uuid.UUID]:
    """A database as version 3 left it, with rows written by that version's worker."""
    ids = [uuid.UUID(int=i + 1) for i in range(3)]
    with psycopg.connect(url) as conn:
        at_schema_version(conn, 3)
        for i, trace_id in enumerate(ids):
            conn.execute(
                f"INSERT INTO llm_traces ({V3_COLUMNS}) VALUES "
                "(%s, 'plan-old', 'd-1', 'planner', 'openai', 'gpt-4o', %s, 20, %s, 12.5, "
                "ARRAY['search'], NULL, false, 0, NULL, %s, NULL, 'default', 'ns')",
                (trace_id, 100 + i, None if i == 2 else 0.001, AT + timedelta(seconds=i)),
            )
    return ids


def test_version_five_applies_once_from_two_processes_over_rows_of_version_three(
    database_url: str,
) -> None:
    ids = _at_version_three(database_url)
    applied = migrate_from_processes(database_url)
    later = tuple(f"{m.version:04d}_{m.name}" for m in migrations.available() if m.version > 3)
    assert "0005_plan_tree" in later
    assert sorted(applied) == [(), later]
    with psycopg.connect(database_url) as conn:
        again = migrations.migrate(conn)
    assert again.applied == ()

    with database.create_pool(database_url, min_size=1, max_size=1) as pool:
        assert migrations.check_schema(pool) == migrations.latest_version()
        repo = LLMTraceRepository(pool)
        old = [repo.get(trace_id) for trace_id in ids]
        assert all(t is not None and t.root_plan_id is None and t.plan_path == [] for t in old)
        # Rows older than the tree are still their plan's tree, found by plan id.
        tree = TreeQueries(pool).tree("plan-old")
        assert tree is not None
        assert (tree.calls, tree.unpriced_calls, tree.cost_usd) == (3, 1, 0.002)
        assert [c.name for c in tree.children] == ["d-1"]

        root_at = AT + timedelta(minutes=1)
        call = llm_trace(
            plan_id="child", root_plan_id="root", root_started_at=root_at,
            plan_path=["root"], started_at=root_at + timedelta(seconds=1), cost_usd=0.5,
        )  # fmt: skip
        tool = ToolCall(
            tool="search", plan_id="child", root_plan_id="root", root_started_at=root_at,
            plan_path=["root"], started_at=root_at + timedelta(seconds=2), duration_ms=3.0,
            outcome="error", error="Timeout: slow",
        )  # fmt: skip
        plans = [
            PlanRecord(
                plan_id="root", root_plan_id="root", root_started_at=root_at,
                started_at=root_at, ended_at=root_at + timedelta(seconds=9),
                duration_ms=9000.0, phases_ms={"search": 3.0},
            ),
            PlanRecord(
                plan_id="child", parent_plan_id="root", root_plan_id="root",
                root_started_at=root_at, plan_path=["root"], started_at=root_at,
                ended_at=root_at + timedelta(seconds=3), duration_ms=3000.0, status="error",
                error="ValueError: no",
            ),
        ]  # fmt: skip
        first = repo.store([call], tool_calls=[tool], plans=plans)
        again_stored = repo.store([call], tool_calls=[tool], plans=plans)
        assert (first.tree_inserted, first.tree_duplicate) == (3, 0)
        assert (again_stored.tree_inserted, again_stored.tree_duplicate) == (0, 3)
        assert repo.get(call.trace_id) == call
        rows = TreeQueries(pool).rows("child")
        assert rows.tools == [tool]
        assert sorted(rows.plans, key=lambda p: p.plan_id) == sorted(plans, key=lambda p: p.plan_id)
        tree = TreeQueries(pool).tree("root")
        assert tree is not None
        [child] = tree.children
        assert (child.name, child.detail["status"], child.errors, child.cost_usd) == (
            "child", "error", 1, 0.5,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("table", "index", "column"),
    [
        ("llm_traces", "llm_traces_root_plan_idx", "root_plan_id"),
        ("tool_calls", "tool_calls_root_plan_idx", "root_plan_id"),
        ("plans", "plans_root_plan_idx", "root_plan_id"),
        ("plans", "plans_plan_idx", "plan_id"),
        ("tool_calls", "tool_calls_plan_idx", "plan_id"),
    ],
)
def test_a_trees_rows_are_found_on_an_index(
    database_url: str, table: str, index: str, column: str
) -> None:
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            f"EXPLAIN SELECT * FROM {table} WHERE {column} = 'x' ORDER BY started_at"
        ).fetchall()
    assert index in "\n".join(row[0] for row in plan)


def test_the_tree_tables_refuse_what_the_models_refuse(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO tool_calls (call_id, tool, plan_path, started_at, duration_ms, "
                "outcome) VALUES (gen_random_uuid(), 't', '{}', now(), 1, 'maybe')"
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO plans (record_id, plan_id, root_plan_id, root_started_at, "
                "plan_path, started_at, ended_at, duration_ms, status, phases_ms) VALUES "
                "(gen_random_uuid(), 'p', 'p', now(), '{}', now(), now() - interval '1 s', "
                "0, 'ok', '{}')"
            )


def test_rows_that_contradict_each_other_still_read_as_a_tree() -> None:
    """Hand-written or hostile rows naming each plan the other's parent (and a plan its
    own ancestor) never loop: the contradicting links are left out."""
    from fleettrace_worker.store.tree_queries import TreeRows, build

    at = AT
    loop_a = llm_trace(plan_id="a", root_plan_id="r", root_started_at=at, plan_path=["r", "b"])
    loop_b = llm_trace(plan_id="b", root_plan_id="r", root_started_at=at, plan_path=["r", "a"])
    itself = llm_trace(plan_id="c", root_plan_id="r", root_started_at=at, plan_path=["r", "c"])
    plans = [
        PlanRecord(plan_id=p, parent_plan_id=q, root_plan_id="r", root_started_at=at,
                   plan_path=["r", q], started_at=at, ended_at=at)
        for p, q in (("a", "b"), ("b", "a"))
    ]  # fmt: skip
    tree = build("r", TreeRows(plans, [loop_a, loop_b, itself], []))
    assert tree is not None
    names: list[str] = []

    def walk(node) -> None:  # type: ignore[no-untyped-def]
        names.append(node.name)
        for child in node.children:
            walk(child)

    walk(tree)
    assert names.count("a") <= 1 and names.count("b") <= 1 and names.count("c") == 1
    assert build("a", TreeRows(plans, [loop_a, loop_b], [])) is not None
