"""Which stored calls a reading command covers, and the shapes it reads them back in:
:class:`TraceFilter` (and its SQL), the keyset cursor of a page, a cost summary's rows.

Kept apart from :mod:`fleettrace_worker.store.repository`, whose hot path is the worker's
COPY of batches, so that the filters every reader shares (the CLI, the demo, the
dashboard) live in one place.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, get_args

from psycopg import sql

from fleettrace.model import LLMTrace
from fleettrace_worker.store import attribute_filters

GroupBy = Literal["provider", "model", "actor", "plan", "day", "namespace"]
GROUP_BY_FIELDS: Final[tuple[str, ...]] = get_args(GroupBy)
GROUP_EXPRESSIONS: Final[dict[str, sql.Composable]] = {
    "provider": sql.SQL("provider"),
    "model": sql.SQL("model"),
    "actor": sql.SQL("actor"),
    "plan": sql.SQL("plan_id"),
    "day": sql.SQL("to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
    "namespace": sql.SQL("namespace"),
}


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """Which traces a query covers; ``since`` is inclusive, ``until`` exclusive.
    ``namespace`` None covers every namespace (rows stored before schema version 3,
    which have none, included); the CLI always names one unless --all-namespaces."""

    provider: str | None = None
    model: str | None = None
    actor: str | None = None
    plan_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    errors_only: bool = False
    namespace: str | None = None
    # Schema version 4: every tag, every (key, value) metadata pair, user, session.
    tags: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()
    user_id: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """Traces newest first; pass ``next_cursor`` back to get the ones after them.
    ``namespaces[i]`` is the namespace ``items[i]`` was stored under (None for a row
    older than schema version 3)."""

    items: list[LLMTrace]
    next_cursor: str | None
    namespaces: list[str | None] = field(default_factory=list)


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
    unknown = [name for name in group_by if name not in GROUP_EXPRESSIONS]
    if unknown or len(set(group_by)) != len(group_by):
        raise ValueError(
            f"group by must be distinct names among {', '.join(GROUP_BY_FIELDS)}; "
            f"got {', '.join(group_by) or 'nothing'}"
        )


def sql_conditions(where: TraceFilter) -> tuple[list[sql.Composable], list[object]]:
    """The SQL conditions and parameters of ``where``, for a query over ``llm_traces``."""
    conditions: list[sql.Composable] = []
    params: list[object] = []
    for column, value in (
        ("namespace", where.namespace),
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


def where_clause(conditions: list[sql.Composable]) -> sql.Composed:
    if not conditions:
        return sql.Composed([])
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions)
