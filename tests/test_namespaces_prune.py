"""``fleettrace prune`` with namespaces: old rows of one namespace only, or of all of
them (and the rows of before namespaces) with ``--all-namespaces``."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from fleettrace.keys import Keys
from fleettrace_worker.store import database
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.factories import NOW, _samples, llm_trace
from tests.worker_helpers import Fleets, _run, _store_legacy, migrated

OLD = NOW - timedelta(days=40)


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
