"""What the groups that forward records to an HTTP backend (``langsmith``, ``otlp``)
share, so each rule is written once: which records of a batch they forward, how a
refused record becomes a dead letter, and how their loop settings derive from the
worker's.

Both groups forward only ``LLMTrace`` records: entries that do not decode are dead
letters of the ``persist`` group (these groups acknowledge them without a copy of
their own) and metric entries are acknowledged untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol

from fleettrace.codec import Kind, decode_entry, decode_envelope
from fleettrace.errors import EntryDecodeError
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.stream.consumer import Consumer, Entry
from fleettrace_worker.stream.deadletter import DeadLetter
from fleettrace_worker.stream.loop import LoopSettings


class ForwardingContext(Protocol):
    """What a forwarding group is built from. The worker's ``WorkerContext`` is one;
    naming only what the groups use keeps forwarding from importing the worker's
    context, and through it the store (the import contracts, docs/architecture.md)."""

    keys: Keys

    def consumer(self, group: str) -> Consumer: ...

    def loop_settings(self) -> LoopSettings: ...


@dataclass(slots=True)
class TracePlace:
    """Where a forwarded record came from: enough to acknowledge its entry and to
    make it a dead letter with its original line."""

    entry: Entry
    batch_id: str
    position: int
    raw: bytes
    kind: Kind


#: The kinds of the trace stream: LLM calls, and the plan tree's tool calls and plans.
TREE_KINDS: Final = frozenset((Kind.TRACE, Kind.TOOL, Kind.PLAN))
_TRACE_ONLY: Final = frozenset((Kind.TRACE,))


def trace_records(
    entries: Sequence[Entry], kinds: frozenset[Kind] = _TRACE_ONLY
) -> Iterator[tuple[TracePlace, LLMTrace | ToolCall | PlanRecord]]:
    """Each record of ``entries`` of one of ``kinds`` (``LLMTrace`` unless told) with
    its place, skipping entries that do not decode and entries of another kind."""
    for entry in entries:
        try:
            lines = decode_envelope(entry.fields)[2]
            decoded = decode_entry(entry.fields)
        except EntryDecodeError:
            continue
        if decoded.kind not in kinds:
            continue
        for record, position in zip(decoded.records, decoded.positions, strict=True):
            assert isinstance(record, LLMTrace | ToolCall | PlanRecord)
            place = TracePlace(entry, decoded.batch_id, position, lines[position], decoded.kind)
            yield place, record


def record_dead_letter(place: TracePlace, consumer: str, reason: str) -> DeadLetter:
    """The dead letter of one forwarded record the backend refused."""
    return DeadLetter.for_record(
        place.entry.stream,
        place.entry.entry_id,
        consumer,
        batch_id=place.batch_id,
        kind=place.kind,
        position=place.position,
        record=place.raw,
        reason=reason,
    )


def forwarding_loop_settings(
    base: LoopSettings, *, batch_records: int, backoff_initial_s: float, backoff_max_s: float
) -> LoopSettings:
    """``base`` (the worker's loop settings) with the backend's backoff, and batches
    no larger than ``batch_records``."""
    return replace(
        base,
        batch_records=min(base.batch_records, batch_records),
        retry_initial_s=backoff_initial_s,
        retry_max_s=backoff_max_s,
    )
