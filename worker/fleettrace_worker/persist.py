"""The ``persist`` group: stream entries to rows in PostgreSQL.

One batch goes through four steps, each in one place:

1. read      (``GroupLoop.take``: XAUTOCLAIM what dead consumers left, else XREADGROUP)
2. decode    (:meth:`PersistLoop.prepare`: ``codec.decode_entry``; a bad envelope or
             a bad record becomes a dead letter with the reason, the good records
             of the same entry go on)
3. store     (:meth:`PersistLoop.deliver`: one committed transaction,
             ``LLMTraceRepository.store``, idempotent)
4. acknowledge (``GroupLoop.handle``: XACK with the dead letters, after the commit)

A crash between 3 and 4 leaves the entries pending; whoever takes them over stores
them again, which adds no row (traces are keyed by ``trace_id``, samples by
``(batch_id, position)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import ConnectionPool

from fleettrace.codec import Kind, decode_entry
from fleettrace.errors import EntryDecodeError, PermanentError
from fleettrace.model import LLMTrace
from fleettrace_worker.consumer import Consumer, Entry
from fleettrace_worker.deadletter import DeadLetter
from fleettrace_worker.loop import GroupLoop, LoopSettings, Prepared
from fleettrace_worker.migrations import check_schema
from fleettrace_worker.repository import LLMTraceRepository, MetricRow


class StoreRefused(PermanentError):
    """PostgreSQL refused the rows themselves (not the connection)."""


@dataclass(slots=True)
class Rows:
    """The good records of a batch, ready for one ``store`` call."""

    traces: list[LLMTrace] = field(default_factory=list)
    samples: list[MetricRow] = field(default_factory=list)


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
        if batch.kind is Kind.TRACE:
            rows.traces.extend(batch.records)  # type: ignore[arg-type]
        else:
            rows.samples.extend(
                (batch.batch_id, position, sample)  # type: ignore[misc]
                for position, sample in zip(batch.positions, batch.records, strict=True)
            )
    return Prepared(rows, len(rows.traces) + len(rows.samples), dead)


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

    def setup(self) -> None:
        """Join the group, and refuse to write into a schema this code does not know
        (``SchemaVersionError`` names the version found)."""
        super().setup()
        if self.schema_version is None:
            self.schema_version = check_schema(self.pool)

    def prepare(self, entries: Sequence[Entry]) -> Prepared[Rows]:
        return decode_entries(entries, self.consumer.name)

    def deliver(self, payload: Rows) -> list[DeadLetter]:
        if not payload.traces and not payload.samples:
            return []
        try:
            self.repository.store(payload.traces, payload.samples)
        except psycopg.Error as error:
            # Connection failures arrive translated (database.connection); what is left
            # is PostgreSQL refusing a value, which no retry will change.
            raise StoreRefused(f"PostgreSQL refused the rows: {error}") from None
        return []
