"""Two namespaces with rows in one database never mix in a read: ``traces list``,
``show``, ``cost`` and ``tree``, and the repository's filter and its index;
``--all-namespaces`` reads across them, saying so."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleettrace.environment import NAMESPACE_VARIABLE
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace.tree_records import PlanRecord
from fleettrace_worker.cli import main
from fleettrace_worker.store import database
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.store.trace_filter import TraceFilter
from tests.factories import NOW, _samples, llm_trace
from tests.tables import read_table
from tests.worker_helpers import Fleets, _run, _store_legacy, index_copies, migrated


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
        copies = index_copies(conn, "llm_traces_namespace_idx")
    # Each daily partition walked on its copy of the index, merged in order: no sort.
    assert any(name in plan for name in copies), plan
    assert not re.search(r"(^|->  )Sort ", plan, re.MULTILINE), plan


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
