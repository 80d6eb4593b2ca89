"""The ``otlp`` consumer group: every ``LLMTrace`` to any OpenTelemetry backend.

A group of its own on the trace stream, beside ``persist`` and ``langsmith``, run
by the same :class:`~fleettrace_worker.stream.loop.GroupLoop` on a thread of its own and
with the same delivery rules as ``langsmith`` (docs/otlp.md):

1. read      (``GroupLoop.take``)
2. map       (:meth:`OtlpLoop.prepare`: ``codec.decode_entry``; spans are built at
             delivery by :func:`~fleettrace_worker.forward.otlp.spans.export_request`)
3. send      (:meth:`OtlpLoop.deliver`: one OTLP/HTTP protobuf request, gzip, per
             batch, through :class:`~fleettrace_worker.forward.otlp.delivery.OtlpSender`)
4. acknowledge (``GroupLoop.handle``, with this group's dead letters), only after a
             2xx.

429, 5xx, timeouts and connection errors are retried by the loop with capped
backoff and jitter, never sooner than Retry-After, the entries kept pending; past
``retry_for_s`` without a success (the shared
:class:`~fleettrace_worker.forward.retrywindow.RetryWindow`) each batch still failing
becomes dead letters with the last reason. 401, 403 and 404 hold the entries
pending and report not ready, never dead-lettering. Another 4xx refuses the batch:
the loop narrows it down entry by entry, and an entry refused alone is a dead
letter with the backend's answer.

``partial_success``: the backend took the request but rejected some spans. OTLP
says how many, not which; when the backend's message names span ids (hex), the
records of those spans become dead letters, each with the message; when it names
none, every record of the request becomes a dead letter with the message and the
count, since any of them may be the rejected one (a replay then sends the same
span ids again).

Entries that do not decode and records that do not validate are dead letters of the
``persist`` group; this group acknowledges them without a copy of its own. Metric
entries are acknowledged untouched: with ``FLEETTRACE_OTLP_METRICS=true`` the GenAI
client metrics are computed from the calls themselves
(:mod:`~fleettrace_worker.forward.otlp.metrics`) and sent after the batch's spans; a retry
for the metrics does not send the spans again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from fleettrace.errors import ConfigurationError
from fleettrace.model import LLMTrace
from fleettrace_worker.errors import ForwardingDeferred
from fleettrace_worker.forward.forwarding import (
    TREE_KINDS,
    ForwardingContext,
    TracePlace,
    forwarding_loop_settings,
    record_dead_letter,
    trace_records,
)
from fleettrace_worker.forward.otlp.delivery import OtlpSender, PartialSuccess
from fleettrace_worker.forward.otlp.metrics import metrics_request
from fleettrace_worker.forward.otlp.settings import OtlpSettings
from fleettrace_worker.forward.otlp.spans import (
    ParentRanges,
    TreeItem,
    export_request,
    leaf_span_id,
)
from fleettrace_worker.forward.retrywindow import RetryWindow
from fleettrace_worker.keys import OTLP_GROUP
from fleettrace_worker.stream.consumer import Consumer, Entry
from fleettrace_worker.stream.deadletter import DeadLetter
from fleettrace_worker.stream.loop import GroupLoop, LoopSettings, Prepared

log = logging.getLogger(__name__)

NOT_CONFIGURED_MESSAGE: Final = (
    "the otlp group exports only with OTEL_EXPORTER_OTLP_ENDPOINT "
    "or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set"
)
_HEX_ID: Final = re.compile(r"\b[0-9a-fA-F]{16}\b")


@dataclass(slots=True)
class OtlpRecord(TracePlace):
    record: TreeItem


@dataclass(slots=True)
class OtlpBatch:
    records: list[OtlpRecord] = field(default_factory=list)
    #: The backend took the spans (and said what it rejected): a retry for the
    #: metrics does not send them again.
    spans_taken: list[DeadLetter] | None = None


def loop_settings(settings: OtlpSettings, base: LoopSettings | None = None) -> LoopSettings:
    """The worker's loop settings with the backend's backoff and batch size."""
    return forwarding_loop_settings(
        base if base is not None else LoopSettings(),
        batch_records=settings.batch_records,
        backoff_initial_s=settings.backoff_initial_s,
        backoff_max_s=settings.backoff_max_s,
    )


class _WithOtlp(Protocol):
    @property
    def otlp(self) -> OtlpSettings: ...


class OtlpContext(ForwardingContext, Protocol):
    """A forwarding context whose settings carry the OTLP group's (the worker's do)."""

    @property
    def settings(self) -> _WithOtlp: ...


def otlp_loop(context: OtlpContext) -> GroupLoop[Any]:
    """The ``otlp`` group of a worker process, set up from the worker's settings (read
    from the ``OTEL_*`` environment at the edge)."""
    settings = context.settings.otlp
    if not settings.enabled:
        raise ConfigurationError(NOT_CONFIGURED_MESSAGE)
    return OtlpLoop(
        context.consumer(OTLP_GROUP),
        settings,
        namespace=context.keys.namespace,
        loop=loop_settings(settings, context.loop_settings()),
    )


class OtlpLoop(GroupLoop[OtlpBatch]):
    """One consumer of the ``otlp`` group."""

    def __init__(
        self,
        consumer: Consumer,
        settings: OtlpSettings,
        *,
        namespace: str,
        sender: OtlpSender | None = None,
        loop: LoopSettings | None = None,
    ) -> None:
        super().__init__(consumer, loop or loop_settings(settings))
        self.otlp = settings
        self.namespace = namespace
        self.service_name = settings.service_name or namespace
        self.sender = sender if sender is not None else OtlpSender(settings)
        self.window = RetryWindow("the OTLP endpoint", settings.retry_for_s)
        self.spans_sent = 0
        self.parents = ParentRanges()

    def __repr__(self) -> str:
        return f"OtlpLoop({self.consumer!r}, {self.otlp!r})"

    def prepare(self, entries: Sequence[Entry]) -> Prepared[OtlpBatch]:
        batch = OtlpBatch()
        for place, record in trace_records(entries, TREE_KINDS):
            batch.records.append(
                OtlpRecord(
                    place.entry, place.batch_id, place.position, place.raw, place.kind, record
                )
            )
        return Prepared(batch, len(batch.records), [])

    def deliver(self, payload: OtlpBatch) -> list[DeadLetter]:
        """One export request for the batch's spans, then, when metrics are on, one
        for its metrics; the dead letters of spans the backend rejected in a
        ``partial_success``."""
        if not payload.records:
            return []
        records = [item.record for item in payload.records]
        try:
            if payload.spans_taken is None:
                payload.spans_taken = self._send_spans(payload, records)
            if self.otlp.metrics_endpoint is not None:
                self._send_metrics([r for r in records if isinstance(r, LLMTrace)])
        except ForwardingDeferred as deferred:
            self.window.fail(deferred, answered=False)
        self.window.succeeded()
        return payload.spans_taken

    def _send_spans(self, payload: OtlpBatch, records: list[TreeItem]) -> list[DeadLetter]:
        request = export_request(
            records, service_name=self.service_name, namespace=self.namespace, parents=self.parents
        )
        partial = self.sender.send(request)
        spans = request.resource_spans[0].scope_spans[0].spans
        self.spans_sent += len(spans)
        self.parents.remember(s for s in spans if s.kind == Span.SpanKind.SPAN_KIND_INTERNAL)
        if partial is None:
            return []
        return self._rejected(payload, partial, {s.span_id for s in spans})

    def _send_metrics(self, records: list[LLMTrace]) -> None:
        request = metrics_request(records, service_name=self.service_name, namespace=self.namespace)
        if request is None:
            return
        partial = self.sender.send_metrics(request)
        if partial is not None:
            # Data points carry no record: there is nothing to dead-letter.
            log.warning(
                "group %s: the OTLP endpoint rejected %d metric data points: %s",
                self.group,
                partial.rejected_spans,
                partial.message,
            )

    def _rejected(
        self, payload: OtlpBatch, partial: PartialSuccess, sent: set[bytes]
    ) -> list[DeadLetter]:
        """Dead letters for the spans a ``partial_success`` rejected (``sent``: the ids
        of every span of the request)."""
        if partial.rejected_spans == 0:
            log.warning("group %s: the OTLP endpoint warned: %s", self.group, partial.message)
            return []
        named = {bytes.fromhex(match) for match in _HEX_ID.findall(partial.message)} & sent
        if named:
            rejected = [item for item in payload.records if leaf_span_id(item.record) in named]
            if len(rejected) < len(named):
                # Parent spans: no record of their own; the calls under them were taken.
                log.warning(
                    "group %s: the OTLP endpoint rejected parent spans: %s",
                    self.group,
                    partial.message,
                )
            reason = f"the OTLP endpoint rejected the span: {partial.message}"
        else:
            rejected = payload.records
            reason = (
                f"the OTLP endpoint rejected {partial.rejected_spans} of the request's spans "
                f"without naming them (this record's may have been taken): {partial.message}"
            )
        return [record_dead_letter(item, self.consumer.name, reason) for item in rejected]

    def close(self) -> None:
        """Close the HTTP session; safe twice."""
        self.sender.close()
