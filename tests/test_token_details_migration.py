"""Schema version 2 (token details) against the machine's PostgreSQL, on a database
that holds rows of version 1: applied once from two processes at once, and again
with nothing to do; the old rows keep every value and read back with the details
unknown; new rows carry details and unknown usage, and the checks hold for them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql

from fleettrace.model import LLMTrace
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.worker_helpers import migrate_from_processes

V1_COLUMNS = (
    "trace_id, plan_id, decision_id, actor, provider, model, prompt_tokens, "
    "completion_tokens, cost_usd, latency_ms, tool_calls, context_hash, streaming, "
    "retry_count, error, started_at"
)
AT = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def _at_version_one(url: str) -> list[uuid.UUID]:
    """A database as version 1 left it, with rows written by that version's worker."""
    [first] = [m for m in migrations.available() if m.version == 1]
    ids = [uuid.UUID(int=i + 1) for i in range(3)]
    with psycopg.connect(url) as conn:
        conn.execute(first.sql.encode())
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(migrations.VERSION_TABLE))
        )
        conn.execute(
            sql.SQL("INSERT INTO {} (version, name) VALUES (1, 'initial')").format(
                sql.Identifier(migrations.VERSION_TABLE)
            )
        )
        for i, trace_id in enumerate(ids):
            conn.execute(
                f"INSERT INTO llm_traces ({V1_COLUMNS}) VALUES "
                "(%s, 'plan-old', NULL, 'planner', 'openai', 'gpt-4o', %s, 20, %s, 12.5, "
                "ARRAY['search'], NULL, false, 0, NULL, %s)",
                (trace_id, 100 + i, None if i == 2 else 0.001 * (i + 1), AT),
            )
    return ids


def test_version_two_applies_once_from_two_processes_over_rows_of_version_one(
    database_url: str,
) -> None:
    ids = _at_version_one(database_url)
    applied = migrate_from_processes(database_url)
    later = tuple(f"{m.version:04d}_{m.name}" for m in migrations.available()[1:])
    assert applied == [(), later]
    assert later[:2] == ("0002_token_details", "0003_producer")
    with psycopg.connect(database_url) as conn:
        again = migrations.migrate(conn)
    assert again.applied == () and again.from_version == migrations.latest_version()

    with database.create_pool(database_url, min_size=1, max_size=1) as pool:
        assert migrations.check_schema(pool) == migrations.latest_version()
        repo = LLMTraceRepository(pool)
        old = [repo.get(trace_id) for trace_id in ids]
        assert [t.prompt_tokens for t in old if t] == [100, 101, 102]
        assert [t.cost_usd for t in old if t] == [0.001, 0.002, None]
        assert all(
            t is not None and t.cache_read_tokens is None and t.reasoning_tokens is None
            for t in old
        )
        new = [
            LLMTrace(
                provider="anthropic",
                model="claude-3-5-sonnet-latest",
                prompt_tokens=10_000,
                cache_read_tokens=9_000,
                cache_write_tokens=1_000,
                audio_input_tokens=0,
                completion_tokens=100,
                reasoning_tokens=40,
                audio_output_tokens=3,
                cost_usd=0.0072,
                started_at=AT,
            ),
            LLMTrace(provider="openai", model="gpt-4o", prompt_tokens=None, started_at=AT),
        ]
        repo.store(new)
        assert repo.get(new[0].trace_id) == new[0]
        assert repo.get(new[1].trace_id) == new[1]
        [row] = repo.cost_summary([], None)
    assert (row.calls, row.prompt_tokens, row.cache_read_tokens) == (5, 10_303, 9_000)
    assert (row.unknown_token_calls, row.unpriced_calls) == (1, 2)


@pytest.mark.parametrize(
    ("columns", "values"),
    [
        ("prompt_tokens, cache_read_tokens, cache_write_tokens", "(10, 6, 5)"),
        ("prompt_tokens, audio_input_tokens", "(10, 11)"),
        ("completion_tokens, reasoning_tokens", "(10, 11)"),
        ("completion_tokens, audio_output_tokens", "(10, 11)"),
        ("prompt_tokens, cache_read_tokens", "(10, -1)"),
        ("prompt_tokens, reasoning_tokens", "(NULL::integer, 1000000001)"),
    ],
)
def test_new_rows_must_keep_each_detail_within_its_total(
    database_url: str, columns: str, values: str
) -> None:
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
        with pytest.raises(psycopg.errors.CheckViolation, match="llm_traces_token_details_check"):
            conn.execute(
                "INSERT INTO llm_traces (trace_id, provider, model, latency_ms, tool_calls, "
                f"streaming, retry_count, started_at, {columns}) SELECT gen_random_uuid(), "
                f"'p', 'm', 1, '{{}}', false, 0, now(), * FROM (VALUES {values}) AS v"
            )
