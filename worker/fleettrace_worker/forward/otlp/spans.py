"""How ``LLMTrace`` records (and the plan tree's tool calls and plan records) become
OTLP spans: a pure mapping, no I/O.

Ids are derived, never drawn at random, so an entry delivered twice (a worker
killed before its acknowledgement, a batch retried after a timeout whose request
did arrive) produces the same spans again, and a backend that keys spans by id
keeps one of each.

- **Trace.** The calls of one plan share one trace: its id is the first 16 bytes of
  ``sha256("fleettrace/trace/plan/<plan id>")``. A call without a plan is a trace of
  its own, whose id is the record's ``trace_id`` (a UUID: 16 bytes).
- **The tree.** Under a plan span, a decision span per ``decision_id``, under it an
  actor span per ``actor``; the LLM call hangs under the deepest of these the
  record names. Each span id is the first 8 bytes of ``sha256`` over its path
  (``plan``, ``decision``, ``actor`` and their ids), so every worker names the same
  span the same way, whatever record of it it sees first. The LLM call's span id is
  derived from its ``trace_id``.
- **The plan tree** (format version 3 records). A record that names its root plan
  belongs to the root's trace, and its path starts with the plans from the root
  down to its own (``plan`` = root, ``plan`` = child, ...), so a child plan's span
  hangs under its parent's. A tool call is a span of its own (``execute_tool
  <tool>``, GenAI ``gen_ai.operation.name=execute_tool``, ``gen_ai.tool.name``), its id
  derived from its ``call_id``. A plan record widens its plan's span to the plan's
  real start and end, and marks it as failed when the plan did. A root plan's own
  records keep the ids they had before the tree (path ``plan`` = root).
- **Parent spans** cover the calls a request knows (earliest start to latest end).
  A loop remembers the range of each parent the backend took
  (:class:`ParentRanges`) and sends a parent again only when a batch widens it,
  then with the union of both ranges: the same id may arrive a few times with a
  growing range, and backends that keep the last version of a span by id show the
  widest (docs/otlp.md).
- **One resource per namespace**: ``service.name`` (``OTEL_SERVICE_NAME``, by default
  the namespace) and ``fleettrace.namespace``.

An id that would come out all zeros (invalid in OTLP) gets its last byte set to 1:
it will not happen with SHA-256, but the rule keeps the mapping total.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from fleettrace.model import LLMTrace
from fleettrace.tree_records import PlanRecord, ToolCall

SCOPE_NAME: Final = "fleettrace"
#: ``gen_ai.operation.name`` of every LLM call: fleettrace records chat calls.
OPERATION_CHAT: Final = "chat"
#: ``gen_ai.operation.name`` of an actor span (an agent's invocation).
OPERATION_AGENT: Final = "invoke_agent"
#: ``gen_ai.operation.name`` of a tool call's span.
OPERATION_TOOL: Final = "execute_tool"
#: fleettrace's own attributes (not GenAI conventions; documented in docs/otlp.md).
COST_ATTRIBUTE: Final = "fleettrace.cost_usd"
#: Where the record's tags and each metadata key go (``fleettrace.metadata.<key>``).
TAGS_ATTRIBUTE: Final = "fleettrace.tags"
METADATA_PREFIX: Final = "fleettrace.metadata."
_ID_PREFIX: Final = b"fleettrace/"
_NANOS: Final = 1_000_000_000
#: Plan trace ids and parent span ids kept computed (parents repeat across records).
_ID_CACHE_SIZE: Final = 65_536
#: Parent spans whose last range a loop remembers (about 100 bytes each).
PARENT_CACHE_SIZE: Final = 100_000

Attribute = tuple[str, str | int | float | bool | list[str]]
#: What the trace stream carries: LLM calls, and the plan tree's tool calls and plans.
TreeItem = LLMTrace | ToolCall | PlanRecord


def _digest(*parts: str) -> bytes:
    # Every part is a validated id or name, which never holds NUL: joining on NUL is
    # unambiguous.
    return hashlib.sha256(_ID_PREFIX + "\x00".join(parts).encode()).digest()


def _valid(raw: bytes) -> bytes:
    return raw if any(raw) else raw[:-1] + b"\x01"


@functools.lru_cache(maxsize=_ID_CACHE_SIZE)
def plan_trace_id(plan_id: str) -> bytes:
    return _valid(_digest("trace", "plan", plan_id)[:16])


def trace_id_of(record: TreeItem) -> bytes:
    """16 bytes: the root plan's trace (the plan's, for a record without a root), or
    the call's own when it has no plan."""
    if record.root_plan_id is not None:
        return plan_trace_id(record.root_plan_id)
    if record.plan_id is not None:
        return plan_trace_id(record.plan_id)
    own = record.call_id if isinstance(record, ToolCall) else record.trace_id
    return _valid(own.bytes)


def llm_span_id(record: LLMTrace) -> bytes:
    return _valid(_digest("llm", str(record.trace_id))[:8])


def plan_path_of(record: TreeItem) -> list[tuple[str, str]]:
    """The plans from the tree's root down to the record's own, as path steps."""
    if record.plan_id is None:
        return []
    if record.root_plan_id is None:
        return [("plan", record.plan_id)]
    chain = [*record.plan_path, record.plan_id]
    if chain[0] != record.root_plan_id:  # a path cut at MAX_PLAN_DEPTH keeps its root
        chain.insert(0, record.root_plan_id)
    return [("plan", plan) for plan in chain]


def parent_path(record: LLMTrace | ToolCall) -> tuple[tuple[str, str], ...]:
    """The parent spans a call or tool hangs under, outermost first."""
    path = plan_path_of(record)
    if record.decision_id is not None:
        path.append(("decision", record.decision_id))
    if record.actor is not None:
        path.append(("actor", record.actor))
    # Without a plan, the parents live in the call's own trace: key them by it.
    if record.plan_id is None and path:
        own = record.call_id if isinstance(record, ToolCall) else record.trace_id
        path.insert(0, ("call", str(own)))
    return tuple(path)


@functools.lru_cache(maxsize=_ID_CACHE_SIZE)
def path_span_id(path: tuple[tuple[str, str], ...]) -> bytes:
    return _valid(_digest("span", *(f"{kind}={value}" for kind, value in path))[:8])


def nanos(moment: datetime) -> int:
    return int(moment.timestamp()) * _NANOS + moment.microsecond * 1000


def end_nanos(record: LLMTrace) -> int:
    return nanos(record.started_at) + int(record.latency_ms * 1_000_000)


def _value(value: str | int | float | bool | list[str]) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value]))
    return AnyValue(string_value=value)


def kv_list(pairs: Iterable[Attribute]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_value(value)) for key, value in pairs]


def llm_attributes(record: LLMTrace) -> list[Attribute]:
    """The GenAI attributes of one call, then fleettrace's own."""
    pairs: list[Attribute] = [
        ("gen_ai.operation.name", OPERATION_CHAT),
        ("gen_ai.provider.name", record.provider),
        ("gen_ai.request.model", record.model),
        # fleettrace keeps the one model name the agent recorded.
        ("gen_ai.response.model", record.model),
    ]
    # Token counts the provider did not report are left out, never sent as zeros.
    for name, tokens in (
        ("gen_ai.usage.input_tokens", record.prompt_tokens),
        ("gen_ai.usage.output_tokens", record.completion_tokens),
        ("gen_ai.usage.cache_read.input_tokens", record.cache_read_tokens),
        ("gen_ai.usage.cache_creation.input_tokens", record.cache_write_tokens),
        ("gen_ai.usage.reasoning.output_tokens", record.reasoning_tokens),
    ):
        if tokens is not None:
            pairs.append((name, tokens))
    error_type = record.error_type
    if error_type is not None:
        pairs.append(("error.type", error_type))
    if record.cost_usd is not None:
        pairs.append((COST_ATTRIBUTE, record.cost_usd))
    pairs.append(("fleettrace.trace_id", str(record.trace_id)))
    for name, value in (
        ("fleettrace.plan_id", record.plan_id),
        ("fleettrace.decision_id", record.decision_id),
        ("fleettrace.actor", record.actor),
        ("fleettrace.context_hash", record.context_hash),
    ):
        if value is not None:
            pairs.append((name, value))
    pairs.append(("fleettrace.streaming", record.streaming))
    pairs.append(("fleettrace.retry_count", record.retry_count))
    if record.tool_calls:
        pairs.append(("fleettrace.tool_calls", list(record.tool_calls)))
    return pairs + _record_attributes(record)


def _record_attributes(record: LLMTrace) -> list[Attribute]:
    """Who and what the call was for (stream format 3): OpenTelemetry's general
    ``user.id`` / ``session.id``, the GenAI time to first chunk (seconds), and the
    record's tags and metadata under fleettrace's names."""
    pairs: list[Attribute] = []
    for name, value in (("user.id", record.user_id), ("session.id", record.session_id)):
        if value is not None:
            pairs.append((name, value))
    if record.ttft_ms is not None:
        pairs.append(("gen_ai.response.time_to_first_chunk", record.ttft_ms / 1000))
    if record.tags:
        pairs.append((TAGS_ATTRIBUTE, list(record.tags)))
    pairs.extend((METADATA_PREFIX + key, value) for key, value in record.metadata.items())
    return pairs


def llm_span(record: LLMTrace) -> Span:
    path = parent_path(record)
    span = Span(
        trace_id=trace_id_of(record),
        span_id=llm_span_id(record),
        parent_span_id=path_span_id(path) if path else b"",
        name=f"{OPERATION_CHAT} {record.model}",
        kind=Span.SpanKind.SPAN_KIND_CLIENT,
        start_time_unix_nano=nanos(record.started_at),
        end_time_unix_nano=end_nanos(record),
        attributes=kv_list(llm_attributes(record)),
    )
    if record.error is not None:
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message=record.error))
    return span


@dataclass(slots=True)
class _Parent:
    trace_id: bytes
    path: tuple[tuple[str, str], ...]
    start: int
    end: int


def _parent_attributes(kind: str, value: str) -> list[Attribute]:
    if kind == "actor":
        return [
            ("gen_ai.operation.name", OPERATION_AGENT),
            ("gen_ai.agent.name", value),
            ("fleettrace.actor", value),
        ]
    return [(f"fleettrace.{kind}_id", value)]


def _extent(record: TreeItem) -> tuple[tuple[tuple[str, str], ...], int, int]:
    """The parent path a record widens, and its range: a call's or tool's own, a plan
    record's the plan's (its own span included in the path)."""
    if isinstance(record, PlanRecord):
        return tuple(plan_path_of(record)), nanos(record.started_at), nanos(record.ended_at)
    if isinstance(record, ToolCall):
        start = nanos(record.started_at)
        return parent_path(record), start, start + int(record.duration_ms * 1_000_000)
    return parent_path(record), nanos(record.started_at), end_nanos(record)


def parent_spans(records: Iterable[TreeItem]) -> list[Span]:
    """One span per plan, decision and actor these records name, covering them."""
    parents: dict[tuple[bytes, tuple[tuple[str, str], ...]], _Parent] = {}
    failed: set[tuple[bytes, tuple[tuple[str, str], ...]]] = set()
    for record in records:
        path, start, end = _extent(record)
        trace_id = trace_id_of(record)
        if isinstance(record, PlanRecord) and record.status == "error":
            failed.add((trace_id, path))
        for depth in range(1, len(path) + 1):
            prefix = path[:depth]
            if prefix[-1][0] == "call":
                continue
            key = (trace_id, prefix)
            known = parents.get(key)
            if known is None:
                parents[key] = _Parent(trace_id, prefix, start, end)
            else:
                known.start = min(known.start, start)
                known.end = max(known.end, end)
    spans = []
    for key, parent in parents.items():
        above = parent.path[:-1]
        kind, value = parent.path[-1]
        span = Span(
            trace_id=parent.trace_id,
            span_id=path_span_id(parent.path),
            parent_span_id=path_span_id(above) if above and above[-1][0] != "call" else b"",
            name=f"{OPERATION_AGENT} {value}" if kind == "actor" else f"{kind} {value}",
            kind=Span.SpanKind.SPAN_KIND_INTERNAL,
            start_time_unix_nano=parent.start,
            end_time_unix_nano=parent.end,
            attributes=kv_list(_parent_attributes(kind, value)),
        )
        if key in failed:
            span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR))
        spans.append(span)
    return spans


def tool_span_id(call: ToolCall) -> bytes:
    return _valid(_digest("tool", str(call.call_id))[:8])


def tool_span(call: ToolCall) -> Span:
    """A tool call: GenAI ``execute_tool``, under its actor, decision or plan."""
    path = parent_path(call)
    start = nanos(call.started_at)
    pairs: list[Attribute] = [
        ("gen_ai.operation.name", OPERATION_TOOL),
        ("gen_ai.tool.name", call.tool),
        ("gen_ai.tool.call.id", str(call.call_id)),
    ]
    if call.error is not None:
        pairs.append(("error.type", call.error.split(":", 1)[0].strip() or "error"))
    for name, value in (
        ("fleettrace.plan_id", call.plan_id),
        ("fleettrace.decision_id", call.decision_id),
        ("fleettrace.actor", call.actor),
    ):
        if value is not None:
            pairs.append((name, value))
    span = Span(
        trace_id=trace_id_of(call),
        span_id=tool_span_id(call),
        parent_span_id=path_span_id(path) if path and path[-1][0] != "call" else b"",
        name=f"{OPERATION_TOOL} {call.tool}",
        kind=Span.SpanKind.SPAN_KIND_INTERNAL,
        start_time_unix_nano=start,
        end_time_unix_nano=start + int(call.duration_ms * 1_000_000),
        attributes=kv_list(pairs),
    )
    if call.error is not None:
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message=call.error))
    return span


def leaf_span_id(record: TreeItem) -> bytes | None:
    """The id of the span a record is (none for a plan record: it widens its plan's)."""
    if isinstance(record, LLMTrace):
        return llm_span_id(record)
    if isinstance(record, ToolCall):
        return tool_span_id(record)
    return None


def leaf_span(record: LLMTrace | ToolCall) -> Span:
    return llm_span(record) if isinstance(record, LLMTrace) else tool_span(record)


def _version() -> str:
    try:
        return metadata.version("fleettrace")
    except metadata.PackageNotFoundError:
        return "0"


SCOPE_VERSION: Final = _version()


def resource(service_name: str, namespace: str) -> Resource:
    """The one resource of a namespace."""
    return Resource(
        attributes=kv_list([("service.name", service_name), ("fleettrace.namespace", namespace)])
    )


class ParentRanges:
    """The time range of each parent span this worker last had taken, so a parent is
    sent again only when a batch widens it (then with the union of both ranges).

    Remembers ``size`` parents, the least recently used going first; a worker that
    forgot one (or another worker) sends it again, with the same id.
    """

    def __init__(self, size: int = PARENT_CACHE_SIZE) -> None:
        self.size = size
        self._known: OrderedDict[bytes, tuple[int, int]] = OrderedDict()

    def widen(self, spans: list[Span]) -> list[Span]:
        """The parents worth sending, each widened to what was sent before."""
        kept = []
        for span in spans:
            known = self._known.get(span.trace_id + span.span_id)
            if known is not None:
                self._known.move_to_end(span.trace_id + span.span_id)
                if known[0] <= span.start_time_unix_nano and span.end_time_unix_nano <= known[1]:
                    continue
                span.start_time_unix_nano = min(known[0], span.start_time_unix_nano)
                span.end_time_unix_nano = max(known[1], span.end_time_unix_nano)
            kept.append(span)
        return kept

    def remember(self, spans: Iterable[Span]) -> None:
        """Called once the backend took ``spans``."""
        for span in spans:
            key = span.trace_id + span.span_id
            self._known[key] = (span.start_time_unix_nano, span.end_time_unix_nano)
            self._known.move_to_end(key)
        while len(self._known) > self.size:
            self._known.popitem(last=False)


def export_request(
    records: Sequence[TreeItem],
    *,
    service_name: str,
    namespace: str,
    parents: ParentRanges | None = None,
) -> ExportTraceServiceRequest:
    """The request carrying ``records``: one resource (the namespace), one scope,
    the parent spans first (those ``parents`` says are worth sending), then one span
    per call."""
    above = parent_spans(records)
    scope = ScopeSpans(
        scope=InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION),
        spans=[
            *(parents.widen(above) if parents else above),
            *(leaf_span(r) for r in records if not isinstance(r, PlanRecord)),
        ],
    )
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource=resource(service_name, namespace), scope_spans=[scope])
        ]
    )
