"""Fleets kept apart in PostgreSQL: two namespaces with rows in one database never mix
in any command, every stored row says its namespace (the workers stamp their own), and
``--all-namespaces`` reads (and prunes) across them, saying so. The Redis side (dead
letters, live counters, groups): tests/test_namespaces_redis.py."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis

from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace.settings import NAMESPACE_VARIABLE
from fleettrace.tree_records import PlanRecord
from fleettrace_worker.cli import main
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.process import Worker
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.repository import LLMTraceRepository, MetricRow
from fleettrace_worker.store.trace_filter import TraceFilter
from tests.factories import add_samples, add_traces, llm_trace, metric_sample, numbered_trace
from tests.tables import read_table
from tests.waiting import wait_until
from tests.worker_helpers import migrate_from_processes, migrated

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)


@dataclass
class Fleets:
    """Two namespaces' rows in one database: ``a`` and ``b`` hold the trace ids of each
    (newest first), ``legacy`` one row stored before namespaces."""

    url: str
    a: Keys
    b: Keys
    traces_a: list[LLMTrace]
    traces_b: list[LLMTrace]
    legacy: LLMTrace


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def _samples(count: int, start: int, at: datetime) -> list[MetricRow]:
    batch = str(uuid.uuid4())
    return [(batch, i, metric_sample(value=float(start + i), observed_at=at)) for i in range(count)]


def _store_legacy(url: str, trace: LLMTrace) -> None:
    """A row as stored before schema version 3: no producer, no namespace (the check
    that refuses such rows now is lifted for the insert and put back, NOT VALID)."""
    with database.create_pool(url) as pool:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE llm_traces DROP CONSTRAINT llm_traces_with_namespace")
        LLMTraceRepository(pool).store([trace])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE llm_traces SET namespace = NULL WHERE trace_id = %s", (trace.trace_id,)
            )
            conn.execute(
                "ALTER TABLE llm_traces ADD CONSTRAINT llm_traces_with_namespace "
                "CHECK (namespace IS NOT NULL) NOT VALID"
            )


@pytest.fixture
def fleets(database_url: str) -> Fleets:
    url = migrated(database_url)
    a, b = Keys(f"ns-a-{uuid.uuid4().hex[:8]}"), Keys(f"ns-b-{uuid.uuid4().hex[:8]}")
    traces_a = [
        llm_trace(model="model-a", plan_id="plan-a", cost_usd=1.0, latency_ms=10.0,
                  prompt_tokens=10, completion_tokens=1, started_at=NOW - timedelta(minutes=i))
        for i in range(3)
    ]  # fmt: skip
    # B's calls share a model and a plan id with A's: only the namespace tells them apart.
    traces_b = [
        llm_trace(model="model-a", plan_id="plan-a", cost_usd=5.0, latency_ms=50.0,
                  prompt_tokens=50, completion_tokens=5, started_at=NOW - timedelta(seconds=30 + i))
        for i in range(2)
    ]  # fmt: skip
    with database.create_pool(url) as pool:
        repo = LLMTraceRepository(pool)
        repo.store(traces_a, _samples(3, 0, NOW), namespace=a.namespace)
        repo.store(traces_b, _samples(2, 10, NOW), namespace=b.namespace)
    legacy = llm_trace(model="model-a", plan_id="plan-a", started_at=NOW - timedelta(hours=1))
    _store_legacy(url, legacy)
    return Fleets(url, a, b, traces_a, traces_b, legacy)


def _ids(traces: list[LLMTrace]) -> list[str]:
    return [str(t.trace_id) for t in traces]


# every row carries its namespace ---------------------------------------------------


def test_a_row_without_a_namespace_is_refused(database_url: str) -> None:
    url = migrated(database_url)
    with psycopg.connect(url) as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="llm_traces_with_namespace"):
            conn.execute(
                "INSERT INTO llm_traces (trace_id, provider, model, latency_ms, tool_calls, "
                "streaming, retry_count, started_at) "
                "VALUES (gen_random_uuid(), 'p', 'm', 1, '{}', false, 0, now())"
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation, match="metric_samples_with_namespace"):
            conn.execute(
                "INSERT INTO metric_samples (batch_id, position, key, labels, value, observed_at) "
                "VALUES (gen_random_uuid(), 0, 'k', '{}', 1, now())"
            )


def test_rows_stored_without_sources_carry_the_configured_namespace(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = migrated(database_url)
    monkeypatch.setenv(NAMESPACE_VARIABLE, "configured-here")
    with database.create_pool(url) as pool:
        LLMTraceRepository(pool).store([llm_trace()], _samples(2, 0, NOW))
        LLMTraceRepository(pool).store([llm_trace()], namespace="given")
    with psycopg.connect(url) as conn:
        traces = conn.execute("SELECT namespace FROM llm_traces ORDER BY 1").fetchall()
        samples = conn.execute("SELECT DISTINCT namespace FROM metric_samples").fetchall()
    assert traces == [("configured-here",), ("given",)]
    assert samples == [("configured-here",)]


@pytest.mark.slow
def test_workers_of_two_namespaces_stamp_each_row_with_its_own(
    redis_url: str, database_url: str, redis_client: redis.Redis
) -> None:
    url = migrated(database_url)
    spaces = [Keys(f"test-{uuid.uuid4().hex[:12]}") for _ in range(2)]
    workers = [
        Worker(
            WorkerSettings(redis_url, url, namespace=k.namespace, consumer=f"w{i}", block_ms=100)
        )
        for i, k in enumerate(spaces)
    ]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for thread in threads:
        thread.start()

    def counts() -> set[tuple[str, str | None, int]]:
        with psycopg.connect(url) as conn:
            return {
                (table, ns, int(n))
                for table in ("llm_traces", "metric_samples")
                for ns, n in conn.execute(
                    f"SELECT namespace, count(*) FROM {table} GROUP BY 1"
                ).fetchall()
            }

    expected = {
        ("llm_traces", spaces[0].namespace, 3),
        ("llm_traces", spaces[1].namespace, 2),
        ("metric_samples", spaces[0].namespace, 4),
        ("metric_samples", spaces[1].namespace, 1),
    }
    try:
        for keys, traces, samples in ((spaces[0], 3, 4), (spaces[1], 2, 1)):
            add_traces(redis_client, keys, [numbered_trace(i) for i in range(traces)])
            add_samples(redis_client, keys, [metric_sample(value=float(i)) for i in range(samples)])
        wait_until(lambda: counts() == expected, 30, "rows of both namespaces")
    finally:
        for worker in workers:
            worker.stop.set()
        for thread in threads:
            thread.join(30)
        for keys in spaces:
            for key in redis_client.scan_iter(match=f"{keys.prefix}*", count=1000):
                redis_client.delete(key)
    assert counts() == expected


def test_a_namespace_filtered_page_stays_on_the_namespace_index(fleets: Fleets) -> None:
    with psycopg.connect(fleets.url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN SELECT trace_id FROM llm_traces WHERE namespace = %s "
                "ORDER BY started_at DESC, trace_id DESC LIMIT 21",
                (fleets.a.namespace,),
            ).fetchall()
        )
    assert "llm_traces_namespace_idx" in plan and "Sort" not in plan, plan


# traces list / show / cost --------------------------------------------------------


def test_traces_list_shows_one_namespace_and_says_which(
    capsys: pytest.CaptureFixture[str], fleets: Fleets
) -> None:
    for keys, traces in ((fleets.a, fleets.traces_a), (fleets.b, fleets.traces_b)):
        code, out, _ = _run(
            capsys, "traces", "list", "--json", "--namespace", keys.namespace,
            "--database-url", fleets.url,
        )  # fmt: skip
        assert code == 0
        data = json.loads(out)
        assert data["namespace"] == keys.namespace
        assert {item["trace_id"] for item in data["items"]} == set(_ids(traces))
        assert {item["namespace"] for item in data["items"]} == {keys.namespace}

        code, out, _ = _run(
            capsys, "traces", "list", "--namespace", keys.namespace, "--database-url", fleets.url
        )
        assert out.splitlines()[0].strip() == f"LLM calls in namespace {keys.namespace!r}"
        assert sum(str(t.trace_id) in out for t in fleets.traces_a + fleets.traces_b) == len(traces)


def test_the_namespace_comes_from_the_environment_by_default(
    capsys: pytest.CaptureFixture[str], fleets: Fleets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NAMESPACE_VARIABLE, fleets.b.namespace)
    code, out, _ = _run(capsys, "traces", "list", "--json", "--database-url", fleets.url)
    assert code == 0
    data = json.loads(out)
    assert data["namespace"] == fleets.b.namespace
    assert [item["trace_id"] for item in data["items"]] == _ids(fleets.traces_b)


def test_all_namespaces_lists_every_row_with_its_namespace(
    capsys: pytest.CaptureFixture[str], fleets: Fleets
) -> None:
    code, out, _ = _run(
        capsys, "traces", "list", "--json", "--all-namespaces", "--database-url", fleets.url
    )
    assert code == 0
    data = json.loads(out)
    assert data["namespace"] is None
    found = {item["trace_id"]: item["namespace"] for item in data["items"]}
    assert found == {
        **dict.fromkeys(_ids(fleets.traces_a), fleets.a.namespace),
        **dict.fromkeys(_ids(fleets.traces_b), fleets.b.namespace),
        str(fleets.legacy.trace_id): None,
    }
    code, out, _ = _run(capsys, "traces", "list", "--all-namespaces", "--database-url", fleets.url)
    assert out.splitlines()[0].strip() == "LLM calls in all namespaces"
    # Rows of several namespaces share the table: each says its own.
    header, rows, _ = read_table(out)
    assert header[0] == "NAMESPACE"
    assert sorted(row[0] for row in rows) == sorted(
        [fleets.a.namespace] * 3 + [fleets.b.namespace] * 2 + ["-"]
    )


def test_traces_cost_sums_one_namespace(capsys: pytest.CaptureFixture[str], fleets: Fleets) -> None:
    sums = {}
    for keys in (fleets.a, fleets.b):
        code, out, _ = _run(
            capsys, "traces", "cost", "--json", "--by", "model,plan",
            "--namespace", keys.namespace, "--database-url", fleets.url,
        )  # fmt: skip
        assert code == 0
        data = json.loads(out)
        assert data["namespace"] == keys.namespace
        [row] = data["items"]
        sums[keys.namespace] = (row["calls"], row["cost_usd"], row["prompt_tokens"])
    assert sums == {fleets.a.namespace: (3, 3.0, 30), fleets.b.namespace: (2, 10.0, 100)}

    code, out, _ = _run(
        capsys, "traces", "cost", "--namespace", fleets.a.namespace, "--database-url", fleets.url
    )
    assert out.splitlines()[0].strip() == f"cost in namespace {fleets.a.namespace!r}"


def test_traces_cost_across_namespaces_groups_by_namespace(
    capsys: pytest.CaptureFixture[str], fleets: Fleets
) -> None:
    code, out, _ = _run(
        capsys, "traces", "cost", "--json", "--all-namespaces", "--by", "namespace",
        "--database-url", fleets.url,
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert data["namespace"] is None
    calls = {row["group"]["namespace"]: row["calls"] for row in data["items"]}
    assert calls == {fleets.a.namespace: 3, fleets.b.namespace: 2, None: 1}


def test_traces_show_finds_a_call_only_in_its_namespace(
    capsys: pytest.CaptureFixture[str], fleets: Fleets
) -> None:
    theirs = str(fleets.traces_b[0].trace_id)
    code, out, err = _run(
        capsys, "traces", "show", theirs, "--namespace", fleets.a.namespace,
        "--database-url", fleets.url,
    )  # fmt: skip
    assert code == 1 and out == ""
    assert err.strip() == (
        f"fleettrace traces: no trace with id {theirs} in namespace {fleets.a.namespace!r}"
    )
    for scope in (["--namespace", fleets.b.namespace], ["--all-namespaces"]):
        code, out, _ = _run(
            capsys, "traces", "show", theirs, "--json", *scope, "--database-url", fleets.url
        )
        assert code == 0
        assert json.loads(out)["namespace"] == fleets.b.namespace


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--namespace", "x", "--all-namespaces"], "not allowed with argument"),
        (["--namespace", "a b"], "fleettrace traces: namespace 'a b' must be"),
    ],
)
def test_a_bad_scope_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], fleets: Fleets, argv: list[str], message: str
) -> None:
    try:
        code = main(["traces", "list", *argv, "--database-url", fleets.url])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_the_repository_filters_by_namespace_as_a_parameter(fleets: Fleets) -> None:
    with database.create_pool(fleets.url) as pool:
        repo = LLMTraceRepository(pool)
        page = repo.query(TraceFilter(namespace=fleets.a.namespace))
        assert [t.trace_id for t in page.items] == [t.trace_id for t in fleets.traces_a]
        assert page.namespaces == [fleets.a.namespace] * 3
        assert len(repo.by_plan("plan-a", namespace=fleets.b.namespace)) == 2
        assert len(repo.by_plan("plan-a")) == 6
        assert repo.get(fleets.traces_a[0].trace_id, namespace=fleets.b.namespace) is None
        assert repo.get_stored(fleets.legacy.trace_id) == (fleets.legacy, None)


# prune ------------------------------------------------------------------------------


@pytest.fixture
def old_fleets(database_url: str) -> Fleets:
    """Old and new rows in two namespaces, and an old row of before namespaces."""
    url = migrated(database_url)
    a, b = Keys("old-a"), Keys("old-b")
    traces_a = [llm_trace(started_at=OLD), llm_trace(started_at=OLD), llm_trace(started_at=NOW)]
    traces_b = [llm_trace(started_at=OLD), llm_trace(started_at=NOW)]
    with database.create_pool(url) as pool:
        repo = LLMTraceRepository(pool)
        repo.store(traces_a, [*_samples(2, 0, OLD), *_samples(1, 5, NOW)], namespace=a.namespace)
        repo.store(traces_b, [*_samples(3, 0, OLD), *_samples(1, 5, NOW)], namespace=b.namespace)
    legacy = llm_trace(started_at=OLD)
    _store_legacy(url, legacy)
    return Fleets(url, a, b, traces_a, traces_b, legacy)


def _per_namespace(url: str) -> dict[tuple[str, str | None], int]:
    with psycopg.connect(url) as conn:
        return {
            (table, ns): int(n)
            for table in ("llm_traces", "metric_samples")
            for ns, n in conn.execute(
                f"SELECT namespace, count(*) FROM {table} GROUP BY 1"
            ).fetchall()
        }


def test_prune_removes_old_rows_of_one_namespace_only(
    capsys: pytest.CaptureFixture[str], old_fleets: Fleets
) -> None:
    a, b = old_fleets.a.namespace, old_fleets.b.namespace
    before = _per_namespace(old_fleets.url)
    code, out, _ = _run(
        capsys, "prune", "--older-than", "30d", "--dry-run", "--namespace", a,
        "--database-url", old_fleets.url,
    )  # fmt: skip
    assert code == 0
    assert out.startswith("would remove 2 traces and 2 metric samples older than ")
    assert out.strip().endswith(f"in namespace {a!r} (and 0 tool calls, 0 plan records)")
    assert _per_namespace(old_fleets.url) == before

    code, out, _ = _run(
        capsys, "prune", "--older-than", "30d", "--batch-rows", "1", "--namespace", a,
        "--database-url", old_fleets.url,
    )  # fmt: skip
    assert code == 0 and out.startswith("removed 2 traces and 2 metric samples")
    assert _per_namespace(old_fleets.url) == {
        **before,
        ("llm_traces", a): 1,
        ("metric_samples", a): 1,
    }

    code, out, _ = _run(
        capsys, "prune", "--older-than", "30d", "--all-namespaces", "--database-url", old_fleets.url
    )
    assert code == 0 and out.startswith("removed 2 traces and 3 metric samples")
    assert out.strip().endswith("in all namespaces (and 0 tool calls, 0 plan records)")
    assert _per_namespace(old_fleets.url) == {
        ("llm_traces", a): 1,
        ("llm_traces", b): 1,
        ("metric_samples", a): 1,
        ("metric_samples", b): 1,
    }


# the migration ------------------------------------------------------------------------


@pytest.mark.slow
def test_version_six_applies_once_from_two_processes_over_rows_of_version_three(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    three = tuple(m for m in migrations.available() if m.version <= 3)
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "available", lambda: three)
        with psycopg.connect(database_url) as conn:
            migrations.migrate(conn)
    with psycopg.connect(database_url) as conn:
        # Rows as version 3 stored them: one a worker stamped, one stored before namespaces.
        for namespace in ("fleet", None):
            conn.execute(
                "INSERT INTO llm_traces (trace_id, provider, model, latency_ms, tool_calls, "
                "streaming, retry_count, started_at, namespace) "
                "VALUES (gen_random_uuid(), 'p', 'm', 1, '{}', false, 0, now(), %s)",
                (namespace,),
            )
    later = tuple(f"{m.version:04d}_{m.name}" for m in migrations.available() if m.version > 3)
    assert "0006_namespace_indexes" in later

    assert migrate_from_processes(database_url) == [(), later]
    with psycopg.connect(database_url) as conn:
        assert migrations.migrate(conn).applied == ()
        assert migrations.check_schema(conn) == migrations.latest_version()
        rows = conn.execute("SELECT namespace FROM llm_traces ORDER BY 1 NULLS LAST").fetchall()
        index = conn.execute("SELECT to_regclass('llm_traces_namespace_idx')").fetchone()
    assert rows == [("fleet",), (None,)]
    assert index == ("llm_traces_namespace_idx",)


def _llm_nodes(node: dict[str, object]) -> list[tuple[object, object]]:
    """(trace id, model) of every LLM call in a `traces tree --json` node, depth first."""
    found = [(node["trace_id"], node["model"])] if node["kind"] == "llm" else []
    for child in node["children"]:  # type: ignore[attr-defined]
        found += _llm_nodes(child)
    return found


def test_a_plan_tree_reads_within_its_namespace(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    """Two fleets may use the same plan id; `traces tree` and `traces show` keep each to
    its own namespace."""
    db = migrated(database_url)
    start = datetime.now(UTC) - timedelta(minutes=5)
    calls = {}
    with database.create_pool(db, min_size=1, max_size=1) as pool:
        for namespace, model in (("fleet-a", "model-a"), ("fleet-b", "model-b")):
            plan = PlanRecord(
                plan_id="shared-plan",
                root_plan_id="shared-plan",
                root_started_at=start,
                started_at=start,
                ended_at=start + timedelta(seconds=3),
            )
            call = llm_trace(
                plan_id="shared-plan",
                root_plan_id="shared-plan",
                root_started_at=start,
                model=model,
                started_at=start + timedelta(seconds=1),
            )
            calls[namespace] = call
            LLMTraceRepository(pool).store([call], plans=[plan], namespace=namespace)

    for namespace, model in (("fleet-a", "model-a"), ("fleet-b", "model-b")):
        code, out, _ = _run(
            capsys, "traces", "tree", "shared-plan", "--json", "--database-url", db,
            "--namespace", namespace,
        )  # fmt: skip
        tree = json.loads(out)
        assert code == 0 and (tree["name"], tree["calls"]) == ("shared-plan", 1)
        assert _llm_nodes(tree) == [(str(calls[namespace].trace_id), model)]
        other = calls["fleet-b" if namespace == "fleet-a" else "fleet-a"]
        code, _, err = _run(
            capsys, "traces", "show", str(other.trace_id), "--database-url", db,
            "--namespace", namespace,
        )  # fmt: skip
        assert code == 1 and f"in namespace {namespace!r}" in err

    code, _, err = _run(
        capsys, "traces", "tree", "shared-plan", "--database-url", db, "--namespace", "fleet-c"
    )
    assert code == 1
    assert err.strip() == "fleettrace traces: no plan with id 'shared-plan' in namespace 'fleet-c'"
    code, out, _ = _run(
        capsys, "traces", "tree", "shared-plan", "--json", "--database-url", db, "--all-namespaces"
    )
    assert code == 0 and json.loads(out)["calls"] == 2
