"""The rows of the plan tree's own tables: ``tool_calls`` and ``plans`` (schema 5).

:meth:`fleettrace_worker.store.repository.LLMTraceRepository.store` writes them in the same
transaction and by the same binary COPY (with the same merge on redelivery) as the
LLM calls: a tool call is keyed by its ``call_id``, a plan record by its
``record_id``, so storing one twice adds nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fleettrace.tree_records import PlanRecord, ToolCall

#: Who recorded a row (schema version 2): written by the worker from the stream key.
SOURCE_COLUMNS: Final = (("producer", "text"), ("namespace", "text"))
#: (producer, namespace) of one row; producer None for the layout before per-producer keys.
Source = tuple[str | None, str | None]

TOOL_CALLS_TABLE: Final = "tool_calls"
PLANS_TABLE: Final = "plans"

#: Columns of tool_calls in the order of ToolCall's fields, with binary COPY types.
TOOL_CALL_COLUMNS: Final = (
    ("call_id", "uuid"),
    ("tool", "text"),
    ("plan_id", "text"),
    ("decision_id", "text"),
    ("actor", "text"),
    ("root_plan_id", "text"),
    ("root_started_at", "timestamptz"),
    ("plan_path", "bytea"),  # ready-made text[] bytes (text_array)
    ("started_at", "timestamptz"),
    ("duration_ms", "float8"),
    ("outcome", "text"),
    ("error", "text"),
)
#: Columns of plans in the order of PlanRecord's fields.
PLAN_COLUMNS: Final = (
    ("record_id", "uuid"),
    ("plan_id", "text"),
    ("parent_plan_id", "text"),
    ("root_plan_id", "text"),
    ("root_started_at", "timestamptz"),
    ("plan_path", "bytea"),
    ("started_at", "timestamptz"),
    ("ended_at", "timestamptz"),
    ("duration_ms", "float8"),
    ("status", "text"),
    ("error", "text"),
    ("phases_ms", "jsonb"),
)
if tuple(ToolCall.model_fields) != tuple(n for n, _ in TOOL_CALL_COLUMNS) or tuple(
    PlanRecord.model_fields
) != tuple(n for n, _ in PLAN_COLUMNS):  # pragma: no cover - guards a model change
    raise RuntimeError("tool_calls / plans columns no longer match the models' fields")

#: PostgreSQL's binary array layout: dimensions, has-nulls flag, element type (25 =
#: text), then per dimension its length and lower bound.
_ARRAY_HEADER: Final = struct.Struct("!iiiii")
_TEXT_OID: Final = 25
_EMPTY_TEXT_ARRAY: Final = struct.pack("!iii", 0, 0, _TEXT_OID)


def text_array(values: list[str]) -> bytes:
    """A one-dimensional text[] in COPY's binary format (values hold no NUL and no
    NULLs: the models refuse both)."""
    if not values:
        return _EMPTY_TEXT_ARRAY
    parts = [_ARRAY_HEADER.pack(1, 0, _TEXT_OID, len(values), 1)]
    for value in values:
        encoded = value.encode()
        parts.append(len(encoded).to_bytes(4, "big"))
        parts.append(encoded)
    return b"".join(parts)


def tool_call_row(call: ToolCall) -> tuple[object, ...]:
    return (
        call.call_id,
        call.tool,
        call.plan_id,
        call.decision_id,
        call.actor,
        call.root_plan_id,
        call.root_started_at,
        text_array(call.plan_path),
        call.started_at,
        call.duration_ms,
        call.outcome,
        call.error,
    )


def plan_row(plan: PlanRecord) -> tuple[object, ...]:
    return (
        plan.record_id,
        plan.plan_id,
        plan.parent_plan_id,
        plan.root_plan_id,
        plan.root_started_at,
        text_array(plan.plan_path),
        plan.started_at,
        plan.ended_at,
        plan.duration_ms,
        plan.status,
        plan.error,
        plan.phases_ms,
    )


@dataclass(frozen=True, slots=True)
class Table:
    """One of the plan tree's tables in a store call: its records and how they become rows."""

    name: str
    staging: str
    columns: tuple[tuple[str, str], ...]
    records: Sequence[ToolCall] | Sequence[PlanRecord]
    to_row: Callable[[Any], tuple[object, ...]]
    sources: Sequence[Source] | None

    def rows(self) -> tuple[tuple[tuple[str, str], ...], list[tuple[object, ...]]]:
        rows = [self.to_row(r) for r in self.records]
        if self.sources is None:
            return self.columns, rows
        rows = [(*r, *o) for r, o in zip(rows, self.sources, strict=True)]
        return self.columns + SOURCE_COLUMNS, rows
