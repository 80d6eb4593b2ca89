"""The ``persist`` group: stream entries to rows in PostgreSQL.

One batch goes through four steps, each in one place:

1. read      (``GroupLoop.take``: XAUTOCLAIM what dead consumers left, else XREADGROUP)
2. decode    (:meth:`PersistLoop.prepare`: ``codec.decode_entry``; a bad envelope or
             a bad record becomes a dead letter with the reason, the good records
             of the same entry go on)
3. store     (:meth:`PersistLoop.deliver`: one committed transaction,
             ``LLMTraceRepository.store``, idempotent; each row's ``producer`` and
             ``namespace`` come from the stream key it was read from)
4. acknowledge (``GroupLoop.handle``: XACK with the dead letters, after the commit)

A crash between 3 and 4 leaves the entries pending; whoever takes them over stores
them again, which adds no row (traces are keyed by ``trace_id``, samples by
``(batch_id, position)``).

What PostgreSQL says about a failed store is sorted in ``database.verdict``: an
outage, a failover's read-only transaction or a timeout keeps the batch (retried by
the loop); only rows the server refused are split in halves, each stored on its
own, down to the one record it refuses, which becomes a dead letter alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import ConnectionPool

from fleettrace.codec import RECORD_SEPARATOR, Kind, decode_entry
from fleettrace.errors import EntryDecodeError
from fleettrace.keys import FIELD_DATA
from fleettrace.model import LLMTrace
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.store import database
from fleettrace_worker.store.database import StoreRefused
from fleettrace_worker.store.migrations import check_schema
from fleettrace_worker.store.repository import LLMTraceRepository, MetricRow
from fleettrace_worker.store.tree_store import Source
from fleettrace_worker.stream.consumer import Consumer, Entry
from fleettrace_worker.stream.deadletter import DeadLetter
from fleettrace_worker.stream.loop import GroupLoop, LoopSettings, Prepared

__all__ = ["Origin", "PersistLoop", "Rows", "StoreRefused", "decode_entries", "refused_record"]


Origin = tuple[Entry, str, Kind, int]
"""Where a record came from: its entry, batch id, kind and position (a plain tuple:
one is made per record on the hot path)."""


def refused_record(origin: Origin, consumer: str, reason: str) -> DeadLetter:
    """The dead letter of one record PostgreSQL refused; its JSON line is cut from the
    entry again only now, so a batch does not keep its lines twice."""
    entry, batch_id, kind, position = origin
    line = entry.fields[FIELD_DATA].split(RECORD_SEPARATOR)[position]
    return DeadLetter.for_record(
        entry.stream,
        entry.entry_id,
        consumer,
        batch_id=batch_id,
        kind=kind,
        position=position,
        record=line,
        reason=reason,
    )


@dataclass(slots=True)
class Rows:
    """The good records of a batch, ready for one ``store`` call, with where each
    came from (``trace_origins[i]`` is that of ``traces[i]``)."""

    traces: list[LLMTrace] = field(default_factory=list)
    samples: list[MetricRow] = field(default_factory=list)
    trace_origins: list[Origin] = field(default_factory=list)
    sample_origins: list[Origin] = field(default_factory=list)
    # The plan tree's records (format version 3), to their own tables.
    tool_calls: list[ToolCall] = field(default_factory=list)
    plans: list[PlanRecord] = field(default_factory=list)
    tool_call_origins: list[Origin] = field(default_factory=list)
    plan_origins: list[Origin] = field(default_factory=list)

    _LISTS = (
        ("traces", "trace_origins"),
        ("samples", "sample_origins"),
        ("tool_calls", "tool_call_origins"),
        ("plans", "plan_origins"),
    )

    def __len__(self) -> int:
        return len(self.traces) + len(self.samples) + len(self.tool_calls) + len(self.plans)

    def halves(self) -> tuple[Rows, Rows]:
        """The records split in two halves of (nearly) equal size."""
        left = len(self) // 2
        first, second = Rows(), Rows()
        for records, origins in self._LISTS:
            items, where = getattr(self, records), getattr(self, origins)
            cut = min(left, len(items))
            left -= cut
            setattr(first, records, items[:cut])
            setattr(second, records, items[cut:])
            setattr(first, origins, where[:cut])
            setattr(second, origins, where[cut:])
        return first, second

    def only_origin(self) -> Origin:
        return (
            self.trace_origins or self.sample_origins or self.tool_call_origins or self.plan_origins
        )[0]


def decode_entries(entries: Sequence[Entry], consumer: str) -> Prepared[Rows]:
    """Rows of every good record, dead letters of every bad entry or record."""
    rows = Rows()
    dead: list[DeadLetter] = []
    for entry in entries:
        try:
            batch = decode_entry(entry.fields)
        except EntryDecodeError as error:
            dead.append(
                DeadLetter.for_entry(
                    entry.stream, entry.entry_id, entry.fields, consumer, str(error)
                )
            )
            continue
        for bad in batch.errors:
            dead.append(
                DeadLetter.for_record(
                    entry.stream,
                    entry.entry_id,
                    consumer,
                    batch_id=batch.batch_id,
                    kind=batch.kind,
                    position=bad.index,
                    record=bad.raw,
                    reason=bad.reason,
                )
            )
        origins = [(entry, batch.batch_id, batch.kind, p) for p in batch.positions]
        if batch.kind is Kind.TRACE:
            rows.traces.extend(batch.records)  # type: ignore[arg-type]
            rows.trace_origins.extend(origins)
        elif batch.kind is Kind.TOOL:
            rows.tool_calls.extend(batch.records)  # type: ignore[arg-type]
            rows.tool_call_origins.extend(origins)
        elif batch.kind is Kind.PLAN:
            rows.plans.extend(batch.records)  # type: ignore[arg-type]
            rows.plan_origins.extend(origins)
        else:
            rows.sample_origins.extend(origins)
            rows.samples.extend(
                (batch.batch_id, position, sample)  # type: ignore[misc]
                for position, sample in zip(batch.positions, batch.records, strict=True)
            )
    return Prepared(rows, len(rows), dead)


class PersistLoop(GroupLoop[Rows]):
    """The loop of the ``persist`` group."""

    def __init__(
        self,
        consumer: Consumer,
        repository: LLMTraceRepository,
        settings: LoopSettings,
        *,
        pool: ConnectionPool,
    ) -> None:
        super().__init__(consumer, settings)
        self.repository = repository
        self.pool = pool
        self.schema_version: int | None = None
        self._source_of: dict[str, Source] = {}

    def _sources(self, origins: Sequence[Origin]) -> list[Source]:
        """(producer, namespace) of each record, from the name of the stream it was read
        from (never from the record: an agent cannot pass for another producer)."""
        found = self._source_of
        sources = []
        for origin in origins:
            stream = origin[0].stream
            source = found.get(stream)
            if source is None:
                keys = self.consumer.keys
                source = found[stream] = (keys.producer_of(stream), keys.namespace)
            sources.append(source)
        return sources

    def setup(self) -> None:
        """Join the group, and refuse to write into a schema this code does not know
        (``SchemaVersionError`` names the version found)."""
        super().setup()
        if self.schema_version is None:
            self.schema_version = check_schema(self.pool)

    def prepare(self, entries: Sequence[Entry]) -> Prepared[Rows]:
        return decode_entries(entries, self.consumer.name)

    def deliver(self, payload: Rows) -> list[DeadLetter]:
        """Store the rows; when PostgreSQL refuses them, store each half on its own,
        down to the single record it refuses, which is returned as a dead letter.

        A ``DatabaseUnavailable`` (an outage, a failover, a timeout) leaves as it
        came, at any depth: the loop retries the whole batch, and the halves already
        committed are merged as duplicates then.
        """
        if not payload:
            return []
        try:
            self.repository.store(
                payload.traces,
                payload.samples,
                trace_sources=self._sources(payload.trace_origins),
                sample_sources=self._sources(payload.sample_origins),
                tool_calls=payload.tool_calls,
                plans=payload.plans,
                tool_call_sources=self._sources(payload.tool_call_origins),
                plan_sources=self._sources(payload.plan_origins),
            )
        except psycopg.Error as error:
            # A SQLSTATE database.SQLSTATE_VERDICTS does not list: not the records'
            # fault as far as anyone knows, so the batch is kept and retried.
            raise database.translate(error, database.url_of(self.pool)) from None
        except StoreRefused as error:
            if len(payload) == 1:
                origin = payload.only_origin()
                return [refused_record(origin, self.consumer.name, f"refused: {error}")]
            first, second = payload.halves()
            return self.deliver(first) + self.deliver(second)
        return []
