"""``LLMTraceRepository``: LLM calls and metric samples in PostgreSQL, and the queries
the CLI and the docs promise over them.

Writing is the worker's hot path. A batch is first copied (binary COPY, one round
trip for the whole batch) straight into the tables; only when that meets a row that
is already there (a redelivered batch) does it fall back to copying into temporary
staging tables and merging with ``ON CONFLICT DO NOTHING``. Both paths commit before
:meth:`LLMTraceRepository.store` returns, so a caller may acknowledge the batch then.

The hourly cost rollup (``llm_cost_hourly``) is kept in the same transaction by
statement-level triggers on ``llm_traces`` (``migrations/0007_cost_rollup.sql``), not
here: they see exactly the rows each statement inserted (so the merge of a redelivered
batch adds only what it really inserted) and every deletion, prune and erase included.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace.keys import configured_namespace
from fleettrace.model import LLMTrace, MetricSample
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.store import database
from fleettrace_worker.store.partitions import id_window
from fleettrace_worker.store.trace_filter import (
    GROUP_EXPRESSIONS,
    CostRow,
    Page,
    TraceFilter,
    check_group_by,
    decode_cursor,
    encode_cursor,
    sql_conditions,
    where_clause,
)
from fleettrace_worker.store.trace_rows import TraceRow, row
from fleettrace_worker.store.tree_store import (
    PLAN_COLUMNS,
    PLANS_TABLE,
    SOURCE_COLUMNS,
    TOOL_CALL_COLUMNS,
    TOOL_CALLS_TABLE,
    Source,
    Table,
    plan_row,
    tool_call_row,
)

TRACES_TABLE: Final = "llm_traces"
SAMPLES_TABLE: Final = "metric_samples"
_TRACES_STAGING: Final = "fleettrace_traces_staging"
_SAMPLES_STAGING: Final = "fleettrace_samples_staging"
_TOOL_CALLS_STAGING: Final = "fleettrace_tool_calls_staging"
_PLANS_STAGING: Final = "fleettrace_plans_staging"

#: Columns of llm_traces in the order of LLMTrace's fields, with their binary COPY types.
TRACE_COLUMNS: Final = (
    # The uuid's 16 bytes as they are (uuid's binary format): a row then holds no
    # object the cyclic garbage collector must keep walking while it waits for COPY.
    ("trace_id", "bytea"),
    ("plan_id", "text"),
    ("decision_id", "text"),
    ("actor", "text"),
    ("provider", "text"),
    ("model", "text"),
    ("prompt_tokens", "int4"),
    ("completion_tokens", "int4"),
    ("cost_usd", "float8"),
    ("latency_ms", "float8"),
    # Sent as ready-made binary array bytes (see tree_store.text_array): psycopg's own list
    # dumper cost a third of the Python time of a store.
    ("tool_calls", "bytea"),
    ("context_hash", "text"),
    ("streaming", "bool"),
    ("retry_count", "int4"),
    ("error", "text"),
    ("started_at", "timestamptz"),
    ("cache_read_tokens", "int4"),
    ("cache_write_tokens", "int4"),
    ("reasoning_tokens", "int4"),
    ("audio_input_tokens", "int4"),
    ("audio_output_tokens", "int4"),
    # Schema version 4 (attributes): tags and metadata are NULL, not empty, when a
    # record has none, so such a row pays nothing in their partial indexes.
    ("tags", "bytea"),
    ("metadata", "jsonb"),
    ("user_id", "text"),
    ("session_id", "text"),
    ("ttft_ms", "float8"),
    # Schema 5, the plan tree (plan_path as ready-made text[] bytes, like tool_calls).
    ("root_plan_id", "text"),
    ("root_started_at", "timestamptz"),
    ("plan_path", "bytea"),
)
SAMPLE_COLUMNS: Final = (
    ("batch_id", "uuid"),
    ("position", "int4"),
    ("key", "text"),
    ("labels", "jsonb"),
    ("value", "float8"),
    ("plan_id", "text"),
    ("observed_at", "timestamptz"),
)
_TRACE_NAMES: Final = tuple(name for name, _ in TRACE_COLUMNS)
_SAMPLE_NAMES: Final = tuple(name for name, _ in SAMPLE_COLUMNS)
if tuple(LLMTrace.model_fields) != _TRACE_NAMES:  # pragma: no cover - guards a model change
    raise RuntimeError("llm_traces columns no longer match LLMTrace's fields")
#: The record's columns, then the namespace it was stored under (not a record field).
_SELECT_TRACE: Final = sql.SQL("SELECT {}, namespace FROM {}").format(
    sql.SQL(", ").join(map(sql.Identifier, _TRACE_NAMES)), sql.Identifier(TRACES_TABLE)
)


def _trace_row(trace: LLMTrace) -> TraceRow:
    """A trace's columns without its source (for benchmarks and tests that add it)."""
    return row(trace, ())


MetricRow = tuple[str, int, MetricSample]
"""A metric sample with the batch id and position that name it (see codec.DecodedBatch)."""


@dataclass(frozen=True, slots=True)
class StoreResult:
    """How many rows a store call added, and how many were already there."""

    traces_inserted: int
    traces_duplicate: int
    samples_inserted: int
    samples_duplicate: int
    tree_inserted: int = 0
    tree_duplicate: int = 0


class LLMTraceRepository:
    """LLM calls and metric samples in PostgreSQL, over a psycopg connection pool."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def store(
        self,
        traces: Sequence[LLMTrace],
        samples: Sequence[MetricRow] = (),
        *,
        trace_sources: Sequence[Source] | None = None,
        sample_sources: Sequence[Source] | None = None,
        namespace: str | None = None,
        tool_calls: Sequence[ToolCall] = (),
        plans: Sequence[PlanRecord] = (),
        tool_call_sources: Sequence[Source] | None = None,
        plan_sources: Sequence[Source] | None = None,
        trace_rows: Sequence[TraceRow] = (),
    ) -> StoreResult:
        """Write a batch in one transaction, committed when this returns.

        ``trace_sources[i]`` (``sample_sources[i]``) says who recorded ``traces[i]``
        (``samples[i]``): it fills the ``producer`` and ``namespace`` columns. Rows
        given without sources have no producer and ``namespace`` (default: the
        configured one, as an emitter of this process would use): every row carries a
        namespace. Rows already stored (same ``trace_id``, same ``(batch_id,
        position)``) are left as they are and counted as duplicates: storing is
        idempotent. ``tool_calls`` and ``plans`` (the plan tree's records, keyed by
        ``call_id`` and ``record_id``) go to their tables in the same transaction.
        ``trace_rows`` are traces already made whole COPY rows, source columns
        included (``trace_rows.decode``, the persist group's path), stored like
        ``traces`` and after them.
        """
        default: Source = (None, namespace or configured_namespace())
        tables = [
            Table(TOOL_CALLS_TABLE, _TOOL_CALLS_STAGING, TOOL_CALL_COLUMNS, tool_calls,
                   tool_call_row, tool_call_sources or [default] * len(tool_calls)),
            Table(PLANS_TABLE, _PLANS_STAGING, PLAN_COLUMNS, plans, plan_row,
                  plan_sources or [default] * len(plans)),
        ]  # fmt: skip
        tree = [(t, *t.rows()) for t in tables if t.records]
        if traces:
            made = [
                row(t, o)
                for t, o in zip(traces, trace_sources or [default] * len(traces), strict=True)
            ]
            trace_rows = [*made, *trace_rows]
        sample_rows = [
            (*_sample_row(s), *o)
            for s, o in zip(samples, sample_sources or [default] * len(samples), strict=True)
        ]
        trace_columns = TRACE_COLUMNS + SOURCE_COLUMNS
        sample_columns = SAMPLE_COLUMNS + SOURCE_COLUMNS
        with database.connection(self._pool) as conn:
            try:
                with conn.transaction():
                    _copy(conn, TRACES_TABLE, trace_columns, trace_rows)
                    _copy(conn, SAMPLES_TABLE, sample_columns, sample_rows)
                    for table, columns, rows in tree:
                        _copy(conn, table.name, columns, rows)
                tree_rows = sum(len(rows) for _, _, rows in tree)
                return StoreResult(len(trace_rows), 0, len(sample_rows), 0, tree_rows, 0)
            except psycopg.errors.UniqueViolation:
                pass  # a redelivery: merge below, skipping what is there
            with conn.transaction():
                _ensure_staging(conn)
                traces_inserted = _merge(
                    conn, TRACES_TABLE, _TRACES_STAGING, trace_columns, trace_rows
                )
                samples_inserted = _merge(
                    conn, SAMPLES_TABLE, _SAMPLES_STAGING, sample_columns, sample_rows
                )
                tree_inserted = sum(
                    _merge(conn, table.name, table.staging, columns, rows)
                    for table, columns, rows in tree
                )
        tree_rows = sum(len(rows) for _, _, rows in tree)
        return StoreResult(
            traces_inserted,
            len(trace_rows) - traces_inserted,
            samples_inserted,
            len(sample_rows) - samples_inserted,
            tree_inserted,
            tree_rows - tree_inserted,
        )

    def get(self, trace_id: uuid.UUID, *, namespace: str | None = None) -> LLMTrace | None:
        """One call by id; with ``namespace``, only if it was stored under it."""
        found = self.get_stored(trace_id, namespace=namespace)
        return None if found is None else found[0]

    def get_stored(
        self, trace_id: uuid.UUID, *, namespace: str | None = None
    ) -> tuple[LLMTrace, str | None] | None:
        """:meth:`get`, and the namespace the call was stored under."""
        window = id_window(trace_id)
        if window is not None:
            # A time-ordered id names its day: only those days' partitions are read.
            found = self._get_one(trace_id, namespace, window)
            if found is not None:
                return found
        return self._get_one(trace_id, namespace, None)

    def _get_one(
        self,
        trace_id: uuid.UUID,
        namespace: str | None,
        window: tuple[datetime, datetime] | None,
    ) -> tuple[LLMTrace, str | None] | None:
        conditions, params = sql_conditions(TraceFilter(namespace=namespace))
        conditions.append(sql.SQL("trace_id = %s"))
        params.append(trace_id)
        if window is not None:
            conditions.append(sql.SQL("started_at >= %s AND started_at < %s"))
            params.extend(window)
        rows, namespaces = self._fetch(
            sql.SQL("{} {}").format(_SELECT_TRACE, where_clause(conditions)), params
        )
        return (rows[0], namespaces[0]) if rows else None

    def by_plan(self, plan_id: str, *, namespace: str | None = None) -> list[LLMTrace]:
        """Every call of one plan (of one namespace, if given), in the order they started."""
        conditions, params = sql_conditions(TraceFilter(plan_id=plan_id, namespace=namespace))
        query = sql.SQL("{} {} ORDER BY started_at, trace_id").format(
            _SELECT_TRACE, where_clause(conditions)
        )
        return self._fetch(query, params)[0]

    def query(self, where: TraceFilter, *, limit: int = 50, after: str | None = None) -> Page:
        """One page of the traces ``where`` selects, newest first.

        Keyset pagination on ``(started_at, trace_id)``: a page costs the same however
        deep it is, and rows arriving meanwhile neither repeat nor shift the pages.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        conditions, params = sql_conditions(where)
        if after is not None:
            conditions.append(sql.SQL("(started_at, trace_id) < (%s, %s)"))
            params.extend(decode_cursor(after))
        query = sql.SQL("{} {} ORDER BY started_at DESC, trace_id DESC LIMIT %s").format(
            _SELECT_TRACE, where_clause(conditions)
        )
        rows, namespaces = self._fetch(query, (*params, limit + 1))
        if len(rows) > limit:
            return Page(rows[:limit], encode_cursor(rows[limit - 1]), namespaces[:limit])
        return Page(rows, None, namespaces)

    def count(self, where: TraceFilter) -> int:
        """How many traces ``where`` selects (what a page is a part of)."""
        conditions, params = sql_conditions(where)
        query = sql.SQL("SELECT count(*) FROM {} {}").format(
            sql.Identifier(TRACES_TABLE), where_clause(conditions)
        )
        with database.connection(self._pool) as conn:
            row = conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def cost_summary(
        self, group_by: Sequence[str], where: TraceFilter | None = None
    ) -> list[CostRow]:
        """Calls, tokens, cost, error rate and latency percentiles per group, the most
        expensive group first. With no ``group_by``: one row for everything selected."""
        check_group_by(group_by)
        conditions, params = sql_conditions(where or TraceFilter())
        groups = [GROUP_EXPRESSIONS[name] for name in group_by]
        # Token sums over the calls whose usage is known (a NULL is skipped by sum);
        # the cost is NULL when nothing of the group was priced.
        known = "prompt_tokens IS NOT NULL AND completion_tokens IS NOT NULL"
        aggregates = sql.SQL(
            "count(*), "
            f"coalesce(sum(prompt_tokens) FILTER (WHERE {known}), 0), "
            f"coalesce(sum(completion_tokens) FILTER (WHERE {known}), 0), "
            "sum(cost_usd), count(*) - count(cost_usd), "
            "count(error)::float8 / count(*), "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms), "
            f"coalesce(sum(cache_read_tokens) FILTER (WHERE {known}), 0), "
            f"coalesce(sum(cache_write_tokens) FILTER (WHERE {known}), 0), "
            f"coalesce(sum(reasoning_tokens) FILTER (WHERE {known}), 0), "
            f"count(*) FILTER (WHERE NOT ({known}))"
        )
        positions = [sql.Literal(i) for i in range(1, len(groups) + 1)]
        order = [sql.SQL("{} DESC NULLS LAST").format(sql.Literal(len(groups) + 4))]
        order += [sql.SQL("{} NULLS LAST").format(p) for p in positions]
        query = sql.SQL("SELECT {} FROM {} {} {} HAVING count(*) > 0 ORDER BY {}").format(
            sql.SQL(", ").join([*groups, aggregates]),
            sql.Identifier(TRACES_TABLE),
            where_clause(conditions),
            sql.SQL("GROUP BY {}").format(sql.SQL(", ").join(positions)) if groups else sql.SQL(""),
            sql.SQL(", ").join(order),
        )
        with database.connection(self._pool) as conn:
            rows = conn.execute(query, params).fetchall()
        width = len(groups)
        return [
            CostRow(
                group={name: _text(value) for name, value in zip(group_by, row, strict=False)},
                calls=int(row[width]),  # type: ignore[call-overload]
                prompt_tokens=int(row[width + 1]),  # type: ignore[call-overload]
                completion_tokens=int(row[width + 2]),  # type: ignore[call-overload]
                cost_usd=None if row[width + 3] is None else float(row[width + 3]),  # type: ignore[arg-type]
                unpriced_calls=int(row[width + 4]),  # type: ignore[call-overload]
                error_rate=float(row[width + 5]),  # type: ignore[arg-type]
                latency_p50_ms=float(row[width + 6]),  # type: ignore[arg-type]
                latency_p95_ms=float(row[width + 7]),  # type: ignore[arg-type]
                cache_read_tokens=int(row[width + 8]),  # type: ignore[call-overload]
                cache_write_tokens=int(row[width + 9]),  # type: ignore[call-overload]
                reasoning_tokens=int(row[width + 10]),  # type: ignore[call-overload]
                unknown_token_calls=int(row[width + 11]),  # type: ignore[call-overload]
            )
            for row in rows
        ]

    def _fetch(
        self, query: sql.Composed, params: Sequence[object]
    ) -> tuple[list[LLMTrace], list[str | None]]:
        """The records ``query`` (built on _SELECT_TRACE) returns, and the namespace of each."""
        with database.connection(self._pool) as conn:
            rows = conn.execute(query, params).fetchall()
        width = len(_TRACE_NAMES)
        return [_trace_of(row[:width]) for row in rows], [_text(row[width]) for row in rows]


def _trace_of(row: Sequence[object]) -> LLMTrace:
    fields = dict(zip(_TRACE_NAMES, row, strict=True))
    # NULL in the attribute columns is a record without tags or metadata.
    if fields["tags"] is None:
        fields["tags"] = []
    if fields["metadata"] is None:
        fields["metadata"] = {}
    return LLMTrace.model_validate(fields)


def _sample_row(item: MetricRow) -> tuple[object, ...]:
    batch_id, position, sample = item
    return (
        uuid.UUID(batch_id),
        position,
        sample.key.value,
        sample.labels,
        sample.value,
        sample.plan_id,
        sample.observed_at,
    )


def _copy(
    conn: psycopg.Connection[tuple[object, ...]],
    table: str,
    columns: tuple[tuple[str, str], ...],
    rows: Sequence[tuple[object, ...]],
) -> None:
    if not rows:
        return
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(name) for name, _ in columns)
    )
    with conn.cursor().copy(statement) as copy:
        copy.set_types([kind for _, kind in columns])
        for row in rows:
            copy.write_row(row)


def _ensure_staging(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Temporary tables live as long as the pooled connection: made once per connection,
    emptied at every commit."""
    found = conn.execute("SELECT to_regclass(%s)", (f"pg_temp.{_TRACES_STAGING}",)).fetchone()
    if found and found[0] is not None:
        return
    for staging, table in (
        (_TRACES_STAGING, TRACES_TABLE),
        (_SAMPLES_STAGING, SAMPLES_TABLE),
        (_TOOL_CALLS_STAGING, TOOL_CALLS_TABLE),
        (_PLANS_STAGING, PLANS_TABLE),
    ):
        conn.execute(
            sql.SQL(
                "CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            ).format(sql.Identifier(staging), sql.Identifier(table))
        )


def _merge(
    conn: psycopg.Connection[tuple[object, ...]],
    table: str,
    staging: str,
    columns: tuple[tuple[str, str], ...],
    rows: Sequence[tuple[object, ...]],
) -> int:
    if not rows:
        return 0
    _copy(conn, staging, columns, rows)
    names = sql.SQL(", ").join(sql.Identifier(name) for name, _ in columns)
    cursor = conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
            sql.Identifier(table), names, names, sql.Identifier(staging)
        )
    )
    return cursor.rowcount


def _text(value: object) -> str | None:
    return None if value is None else str(value)
