"""docs/reference/observability.md describes the code: the PostgreSQL tables as
``fleettrace migrate`` makes them, the LangSmith runs as ``runs.py`` builds them, and
every OpenTelemetry GenAI name the mapping promises."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import psycopg
import pytest

from fleettrace.model import LLMTrace
from fleettrace_worker.forward.langsmith.runs import PLAN_ROOT_NAMESPACE, llm_run
from fleettrace_worker.store.migrations import migrate
from tests.factories import llm_trace
from tests.test_model import DOC, doc_rows

#: The doc writes PostgreSQL's short names.
_SHORT_TYPES = {"timestamp with time zone": "timestamptz"}


def columns(conn: psycopg.Connection, table: str) -> dict[str, list[str]]:
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    return {
        name: [f"`{_SHORT_TYPES.get(kind, kind)}`", "no" if not_null else "yes"]
        for name, kind, not_null in rows
    }


@pytest.fixture
def migrated(database_url: str):
    with psycopg.connect(database_url) as conn:
        migrate(conn)
        conn.commit()
        yield conn


@pytest.mark.parametrize(
    ("heading", "table"),
    [
        ("### `llm_traces`", "llm_traces"),
        ("### `metric_samples`", "metric_samples"),
        ("### `fleettrace_schema_version`", "fleettrace_schema_version"),
    ],
)
def test_each_table_is_documented_column_by_column(migrated, heading, table) -> None:
    documented = {name: cells[:2] for name, cells in doc_rows(heading).items()}
    assert documented == columns(migrated, table)


def test_llm_traces_columns_follow_the_record_and_its_indexes_are_all_listed(migrated) -> None:
    rows = doc_rows("### `llm_traces`")
    assert list(rows)[: len(LLMTrace.model_fields)] == list(LLMTrace.model_fields)
    indexes = {
        name
        for (name,) in migrated.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'llm_traces'"
        ).fetchall()
    }
    assert set(doc_rows("Indexes, each serving one query")) == indexes


def test_every_secondary_index_of_every_table_is_named_in_the_docs(migrated) -> None:
    text = DOC.read_text()
    names = migrated.execute(
        "SELECT indexrelid::regclass::text FROM pg_index "
        "WHERE indrelid::regclass::text = ANY(%s) AND NOT indisprimary",
        (["llm_traces", "metric_samples", "fleettrace_schema_version"],),
    ).fetchall()
    assert names
    for (name,) in names:
        assert f"`{name}" in text, name


DOC_CALL = {
    "actor": "planner",
    "prompt_tokens": 10,
    "completion_tokens": 5,
    "started_at": datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
}


def _flat_keys(run: dict) -> set[str]:
    keys = set(run) - {"extra"}
    return keys | {f"extra.{name}" for name in run["extra"]}


def test_the_run_table_lists_every_field_of_an_llm_run() -> None:
    documented = set(doc_rows("### The run of one LLM call"))
    placement = {"trace_id", "parent_run_id", "dotted_order"}
    assert documented | placement == _flat_keys(
        llm_run(llm_trace(DOC_CALL, plan_id="plan-a"), "project")
    )
    assert documented | {"trace_id", "dotted_order"} == _flat_keys(
        llm_run(llm_trace(DOC_CALL, plan_id=None), "p")
    )


def test_the_documented_metadata_is_the_metadata_sent() -> None:
    cell = doc_rows("### The run of one LLM call")["extra.metadata"][0]
    documented = set(re.findall(r"`(\w+)`(?: = `\w+`)?", cell))
    assert documented == set(
        llm_run(llm_trace(DOC_CALL, plan_id="plan-a"), "p")["extra"]["metadata"]
    )


def test_the_plan_root_namespace_in_the_docs_is_the_one_in_the_code() -> None:
    assert str(PLAN_ROOT_NAMESPACE) in DOC.read_text()


def test_the_opentelemetry_mapping_names_every_genai_name() -> None:
    rows = doc_rows("## OpenTelemetry GenAI names")
    assert set(rows) == {
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.response.time_to_first_chunk",
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
    }
