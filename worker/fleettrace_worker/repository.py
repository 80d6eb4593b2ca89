"""``LLMTraceRepository``: LLM calls and metric samples in PostgreSQL, and the queries
the CLI and the docs promise over them.

Writing is the worker's hot path. A batch is first copied (binary COPY, one round
trip for the whole batch) straight into the tables; only when that meets a row that
is already there (a redelivered batch) does it fall back to copying into temporary
staging tables and merging with ``ON CONFLICT DO NOTHING``. Both paths commit before
:meth:`LLMTraceRepository.store` returns, so a caller may acknowledge the batch then.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Final, Literal, get_args

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace.model import LLMTrace, MetricSample
from fleettrace_worker import attribute_filters, database

TRACES_TABLE: Final = "llm_traces"
SAMPLES_TABLE: Final = "metric_samples"
_TRACES_STAGING: Final = "fleettrace_traces_staging"
_SAMPLES_STAGING: Final = "fleettrace_samples_staging"

#: Columns of llm_traces in the order of LLMTrace's fields, with their binary COPY types.
TRACE_COLUMNS: Final = (
    ("trace_id", "uuid"),
    ("plan_id", "text"),
    ("decision_id", "text"),
    ("actor", "text"),
    ("provider", "text"),
    ("model", "text"),
    ("prompt_tokens", "int4"),
    ("completion_tokens", "int4"),
    ("cost_usd", "float8"),
    ("latency_ms", "float8"),
    # Sent as ready-made binary array bytes (see _text_array): psycopg's own list
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
#: Who recorded a row (schema version 2): written by the worker from the stream key.
SOURCE_COLUMNS: Final = (("producer", "text"), ("namespace", "text"))
#: (producer, namespace) of one row; producer None for the layout before per-producer keys.
Source = tuple[str | None, str | None]
_TRACE_NAMES: Final = tuple(name for name, _ in TRACE_COLUMNS)
_SAMPLE_NAMES: Final = tuple(name for name, _ in SAMPLE_COLUMNS)
if tuple(LLMTrace.model_fields) != _TRACE_NAMES:  # pragma: no cover - guards a model change
    raise RuntimeError("llm_traces columns no longer match LLMTrace's fields")
_TOOL_CALLS_AT: Final = _TRACE_NAMES.index("tool_calls")
_TAGS_AT: Final = _TRACE_NAMES.index("tags")
_before_tool_calls: Final = attrgetter(*_TRACE_NAMES[:_TOOL_CALLS_AT])
_after_tool_calls: Final = attrgetter(*_TRACE_NAMES[_TOOL_CALLS_AT + 1 : _TAGS_AT])
_after_metadata: Final = attrgetter(*_TRACE_NAMES[_TAGS_AT + 2 :])
#: PostgreSQL's binary array layout: dimensions, has-nulls flag, element type (25 =
#: text), then per dimension its length and lower bound.
_ARRAY_HEADER: Final = struct.Struct("!iiiii")
_TEXT_OID: Final = 25
_EMPTY_TEXT_ARRAY: Final = struct.pack("!iii", 0, 0, _TEXT_OID)
_SELECT_TRACE: Final = sql.SQL("SELECT {} FROM {}").format(
    sql.SQL(", ").join(map(sql.Identifier, _TRACE_NAMES)), sql.Identifier(TRACES_TABLE)
)

GroupBy = Literal["provider", "model", "actor", "plan", "day"]
GROUP_BY_FIELDS: Final[tuple[str, ...]] = get_args(GroupBy)
_GROUP_EXPRESSIONS: Final[dict[str, sql.Composable]] = {
    "provider": sql.SQL("provider"),
    "model": sql.SQL("model"),
    "actor": sql.SQL("actor"),
    "plan": sql.SQL("plan_id"),
    "day": sql.SQL("to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
}

MetricRow = tuple[str, int, MetricSample]
"""A metric sample with the batch id and position that name it (see codec.DecodedBatch)."""


@dataclass(frozen=True, slots=True)
class StoreResult:
    """How many rows a store call added, and how many were already there."""

    traces_inserted: int
    traces_duplicate: int
    samples_inserted: int
    samples_duplicate: int


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """Which traces a query covers; ``since`` is inclusive, ``until`` exclusive."""

    provider: str | None = None
    model: str | None = None
    actor: str | None = None
    plan_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    errors_only: bool = False
    # Schema version 4: every tag, every (key, value) metadata pair, user, session.
    tags: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()
    user_id: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """Traces newest first; pass ``next_cursor`` back to get the ones after them."""

    items: list[LLMTrace]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class CostRow:
    """One group of a cost summary. ``cost_usd`` sums the priced calls only, and is
    ``None`` when no call of the group was priced (unknown, not free);
    ``unpriced_calls`` says how many calls had no known price. Token sums cover the
    calls whose usage is known; ``unknown_token_calls`` counts the others."""

    group: dict[str, str | None]
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    unpriced_calls: int
    error_rate: float
    latency_p50_ms: float
    latency_p95_ms: float
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    unknown_token_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class InvalidCursor(ValueError):
    """A pagination cursor that this code did not make."""


def encode_cursor(trace: LLMTrace) -> str:
    raw = f"{trace.started_at.isoformat()}|{trace.trace_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        started, trace_id = raw.split("|")
        at = datetime.fromisoformat(started)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at, uuid.UUID(trace_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(f"cursor {cursor[:64]!r} is not one this command returned") from None


def check_group_by(group_by: Sequence[str]) -> None:
    """ValueError unless ``group_by`` holds distinct names among GROUP_BY_FIELDS."""
    unknown = [name for name in group_by if name not in _GROUP_EXPRESSIONS]
    if unknown or len(set(group_by)) != len(group_by):
        raise ValueError(
            f"group by must be distinct names among {', '.join(GROUP_BY_FIELDS)}; "
            f"got {', '.join(group_by) or 'nothing'}"
        )


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
    ) -> StoreResult:
        """Write a batch in one transaction, committed when this returns.

        ``trace_sources[i]`` (``sample_sources[i]``) says who recorded ``traces[i]``
        (``samples[i]``): it fills the ``producer`` and ``namespace`` columns, NULL
        without them. Rows already stored (same ``trace_id``, same ``(batch_id,
        position)``) are left as they are and counted as duplicates: storing is
        idempotent.
        """
        trace_rows = [_trace_row(t) for t in traces]
        sample_rows = [_sample_row(s) for s in samples]
        trace_columns: tuple[tuple[str, str], ...] = TRACE_COLUMNS
        sample_columns: tuple[tuple[str, str], ...] = SAMPLE_COLUMNS
        if trace_sources is not None:
            trace_rows = [(*r, *o) for r, o in zip(trace_rows, trace_sources, strict=True)]
            trace_columns = TRACE_COLUMNS + SOURCE_COLUMNS
        if sample_sources is not None:
            sample_rows = [(*r, *o) for r, o in zip(sample_rows, sample_sources, strict=True)]
            sample_columns = SAMPLE_COLUMNS + SOURCE_COLUMNS
        with database.connection(self._pool) as conn:
            try:
                with conn.transaction():
                    _copy(conn, TRACES_TABLE, trace_columns, trace_rows)
                    _copy(conn, SAMPLES_TABLE, sample_columns, sample_rows)
                return StoreResult(len(trace_rows), 0, len(sample_rows), 0)
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
        return StoreResult(
            traces_inserted,
            len(trace_rows) - traces_inserted,
            samples_inserted,
            len(sample_rows) - samples_inserted,
        )

    def get(self, trace_id: uuid.UUID) -> LLMTrace | None:
        query = sql.SQL("{} WHERE trace_id = %s").format(_SELECT_TRACE)
        rows = self._fetch(query, (trace_id,))
        return rows[0] if rows else None

    def by_plan(self, plan_id: str) -> list[LLMTrace]:
        """Every call of one plan, in the order they started."""
        query = sql.SQL("{} WHERE plan_id = %s ORDER BY started_at, trace_id").format(_SELECT_TRACE)
        return self._fetch(query, (plan_id,))

    def query(self, where: TraceFilter, *, limit: int = 50, after: str | None = None) -> Page:
        """One page of the traces ``where`` selects, newest first.

        Keyset pagination on ``(started_at, trace_id)``: a page costs the same however
        deep it is, and rows arriving meanwhile neither repeat nor shift the pages.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        conditions, params = _conditions(where)
        if after is not None:
            conditions.append(sql.SQL("(started_at, trace_id) < (%s, %s)"))
            params.extend(decode_cursor(after))
        query = sql.SQL("{} {} ORDER BY started_at DESC, trace_id DESC LIMIT %s").format(
            _SELECT_TRACE, _where(conditions)
        )
        rows = self._fetch(query, (*params, limit + 1))
        if len(rows) > limit:
            return Page(rows[:limit], encode_cursor(rows[limit - 1]))
        return Page(rows, None)

    def count(self, where: TraceFilter) -> int:
        """How many traces ``where`` selects (what a page is a part of)."""
        conditions, params = _conditions(where)
        query = sql.SQL("SELECT count(*) FROM {} {}").format(
            sql.Identifier(TRACES_TABLE), _where(conditions)
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
        conditions, params = _conditions(where or TraceFilter())
        groups = [_GROUP_EXPRESSIONS[name] for name in group_by]
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
            _where(conditions),
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

    def _fetch(self, query: sql.Composed, params: Sequence[object]) -> list[LLMTrace]:
        with database.connection(self._pool) as conn:
            rows = conn.execute(query, params).fetchall()
        return [_trace_of(row) for row in rows]


def _trace_row(trace: LLMTrace) -> tuple[object, ...]:
    return (
        *_before_tool_calls(trace),
        _text_array(trace.tool_calls),
        *_after_tool_calls(trace),
        _text_array(trace.tags) if trace.tags else None,
        trace.metadata or None,
        *_after_metadata(trace),
    )


def _trace_of(row: Sequence[object]) -> LLMTrace:
    fields = dict(zip(_TRACE_NAMES, row, strict=True))
    # NULL in the attribute columns is a record without tags or metadata.
    if fields["tags"] is None:
        fields["tags"] = []
    if fields["metadata"] is None:
        fields["metadata"] = {}
    return LLMTrace.model_validate(fields)


def _text_array(values: list[str]) -> bytes:
    """A one-dimensional text[] in COPY's binary format (values hold no NUL and no
    NULLs: the model refuses both)."""
    if not values:
        return _EMPTY_TEXT_ARRAY
    parts = [_ARRAY_HEADER.pack(1, 0, _TEXT_OID, len(values), 1)]
    for value in values:
        encoded = value.encode()
        parts.append(len(encoded).to_bytes(4, "big"))
        parts.append(encoded)
    return b"".join(parts)


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
    for staging, table in ((_TRACES_STAGING, TRACES_TABLE), (_SAMPLES_STAGING, SAMPLES_TABLE)):
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


def _conditions(where: TraceFilter) -> tuple[list[sql.Composable], list[object]]:
    conditions: list[sql.Composable] = []
    params: list[object] = []
    for column, value in (
        ("provider", where.provider),
        ("model", where.model),
        ("actor", where.actor),
        ("plan_id", where.plan_id),
    ):
        if value is not None:
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if where.since is not None:
        conditions.append(sql.SQL("started_at >= %s"))
        params.append(where.since)
    if where.until is not None:
        conditions.append(sql.SQL("started_at < %s"))
        params.append(where.until)
    if where.errors_only:
        conditions.append(sql.SQL("error IS NOT NULL"))
    more, more_params = attribute_filters.conditions(
        where.tags, where.metadata, where.user_id, where.session_id
    )
    return conditions + more, params + more_params


def _where(conditions: list[sql.Composable]) -> sql.Composed:
    if not conditions:
        return sql.Composed([])
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions)


def _text(value: object) -> str | None:
    return None if value is None else str(value)
