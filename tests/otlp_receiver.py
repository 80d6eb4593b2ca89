"""A strict OTLP/HTTP traces receiver on 127.0.0.1, standing in for the Collector.

It decodes every request with ``opentelemetry-proto`` and refuses what the Collector
would refuse: a content type other than ``application/x-protobuf`` (415), a body that
does not gunzip or decode (400), a trace id that is not 16 bytes or all zeros, a span
id that is not 8 bytes or all zeros, a parent span id of the wrong size (400). It
also refuses any ``gen_ai.*`` attribute name that the GenAI semantic conventions
(``opentelemetry-semantic-conventions``) do not define, and a resource without
``service.name``.

Faults are scripted: ``faults`` is a queue of answers for the next requests (a
status with headers, a delay past the client's timeout, a partial success, or a
refused connection while ``down`` is set).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics

#: Every attribute name the GenAI conventions define.
GENAI_NAMES: Final = frozenset(
    value
    for value in vars(gen_ai_attributes).values()
    if isinstance(value, str) and value.startswith("gen_ai.")
)
#: Every metric name the GenAI conventions define.
GENAI_METRICS: Final = frozenset(
    value
    for value in vars(gen_ai_metrics).values()
    if isinstance(value, str) and value.startswith("gen_ai.")
)
PATH: Final = "/v1/traces"
METRICS_PATH: Final = "/v1/metrics"


@dataclass
class Fault:
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering (past the client's timeout: a timeout).
    delay_s: float = 0.0
    #: Answer 200 with a partial success rejecting the spans this picks.
    reject: Any = None
    message: str = ""


@dataclass
class Received:
    """What the receiver took (spans it rejected in a partial success excluded)."""

    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    headers: list[dict[str, str]] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)


def check_request(request: ExportTraceServiceRequest) -> str | None:
    """Why the Collector would refuse this request, or None."""
    for resource_spans in request.resource_spans:
        names = {kv.key for kv in resource_spans.resource.attributes}
        if "service.name" not in names:
            return "resource without service.name"
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or not any(span.trace_id):
                    return f"invalid trace id {span.trace_id.hex()!r}"
                if len(span.span_id) != 8 or not any(span.span_id):
                    return f"invalid span id {span.span_id.hex()!r}"
                if span.parent_span_id and (
                    len(span.parent_span_id) != 8 or not any(span.parent_span_id)
                ):
                    return f"invalid parent span id {span.parent_span_id.hex()!r}"
                for kv in span.attributes:
                    if kv.key.startswith("gen_ai.") and kv.key not in GENAI_NAMES:
                        return f"unknown GenAI attribute {kv.key}"
    return None


def check_metrics(request: ExportMetricsServiceRequest) -> str | None:
    """Why this metrics request would be refused: unknown GenAI names, bad buckets."""
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name.startswith("gen_ai.") and metric.name not in GENAI_METRICS:
                    return f"unknown GenAI metric {metric.name}"
                for point in metric.histogram.data_points:
                    if len(point.bucket_counts) != len(point.explicit_bounds) + 1:
                        return f"{metric.name}: bucket counts do not match the bounds"
                    if sum(point.bucket_counts) != point.count:
                        return f"{metric.name}: bucket counts do not add up to the count"
                    for kv in point.attributes:
                        if kv.key.startswith("gen_ai.") and kv.key not in GENAI_NAMES:
                            return f"unknown GenAI attribute {kv.key}"
    return None


class OtlpReceiver:
    def __init__(self, port: int = 0) -> None:
        self.received = Received()
        self.faults: deque[Fault] = deque()
        self.lock = threading.Lock()
        self.down = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.handle(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def traces_url(self) -> str:
        return self.url + PATH

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(
        self, handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Content-Type", headers.pop("content_type", "text/plain"))
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)
        with self.lock:
            self.received.statuses[status] += 1

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self.lock:
            self.received.requests += 1
            self.received.headers.append(dict(handler.headers.items()))
            fault = self.faults.popleft() if self.faults else None
        if self.down.is_set():
            self._answer(handler, 503, b"down")
            return
        if handler.path not in (PATH, METRICS_PATH):
            self._answer(handler, 404, b"not found")
            return
        if handler.headers.get("Content-Type") != "application/x-protobuf":
            self._answer(handler, 415, b"unsupported content type")
            return
        if handler.headers.get("Content-Encoding") == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                self._answer(handler, 400, b"bad gzip")
                return
        if handler.path == METRICS_PATH:
            self._metrics(handler, body, fault)
            return
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError:
            self._answer(handler, 400, b"malformed protobuf")
            return
        problem = check_request(request)
        if problem is not None:
            self._answer(handler, 400, problem.encode())
            return
        if fault is not None and fault.reject is None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            self._answer(handler, fault.status, b"injected", **fault.headers)
            return
        spans = [
            span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans
        ]
        rejected: list[Span] = list(fault.reject(spans)) if fault is not None else []
        rejected_ids = {span.span_id for span in rejected}
        with self.lock:
            for rs in request.resource_spans:
                self.received.resources.append(
                    {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                )
            self.received.spans.extend(s for s in spans if s.span_id not in rejected_ids)
        answer = ExportTraceServiceResponse()
        if rejected:
            assert fault is not None
            answer.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=len(rejected), error_message=fault.message)
            )
        self._answer(
            handler, 200, answer.SerializeToString(), content_type="application/x-protobuf"
        )

    def _metrics(self, handler: BaseHTTPRequestHandler, body: bytes, fault: Fault | None) -> None:
        request = ExportMetricsServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError:
            self._answer(handler, 400, b"malformed protobuf")
            return
        problem = check_metrics(request)
        if problem is not None:
            self._answer(handler, 400, problem.encode())
            return
        if fault is not None:
            self._answer(handler, fault.status, b"injected", **fault.headers)
            return
        with self.lock:
            self.received.metrics.extend(
                m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            )
        self._answer(
            handler,
            200,
            ExportMetricsServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def metrics(self) -> list[Metric]:
        with self.lock:
            return list(self.received.metrics)

    def spans(self) -> list[Span]:
        with self.lock:
            return list(self.received.spans)
