"""Sending one OTLP/HTTP export request and saying plainly whether it arrived.

The one place where HTTP answers of an OTLP backend become fleettrace errors, by
the rules of the OTLP/HTTP specification and the ``langsmith`` group's own:

- 2xx: taken. The body is an ``ExportTraceServiceResponse``; its
  ``partial_success`` (rejected spans and the backend's message) is returned.
- 408, 425, 429 and 5xx, timeouts and connection errors:
  :class:`ForwardingDeferred`, with the server's Retry-After.
- 401, 403 and 404: :class:`ForwardingUnauthorized`: the headers (API key) or the
  endpoint are wrong, not the spans; retried, never dead-lettered, the group reports
  not ready and names the variables to fix.
- any other 4xx: :class:`ForwardingRejected` with the backend's answer.

Messages carry the endpoint and the answer, never the request headers.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Final

import requests
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from fleettrace_worker.errors import ForwardingDeferred, ForwardingRejected, ForwardingUnauthorized
from fleettrace_worker.forward.otlp.settings import HEADERS_VARIABLE, OtlpSettings
from fleettrace_worker.forward.retrywindow import parse_retry_after

CONTENT_TYPE: Final = "application/x-protobuf"
_RETRYABLE_4XX: Final = frozenset((408, 425, 429))
#: The headers or the endpoint are wrong: every request would meet the same answer.
_CONFIGURATION_4XX: Final = frozenset((401, 403, 404))
_SERVER_ERROR: Final = 500
_ANSWER_CHARS: Final = 300


@dataclass(frozen=True, slots=True)
class PartialSuccess:
    """What the backend said it did not take out of an accepted request."""

    #: Spans (or metric data points) rejected.
    rejected_spans: int
    message: str


def _answer_text(response: requests.Response) -> str:
    if response.headers.get("Content-Type", "").startswith(CONTENT_TYPE):
        # A google.rpc.Status; its message is the readable part of the bytes.
        text = response.content.decode("utf-8", "replace")
        text = "".join(ch for ch in text if ch.isprintable())
    else:
        text = response.text
    return " ".join(text.split())[:_ANSWER_CHARS]


def configuration_message(endpoint: str, status: int) -> str:
    return (
        f"the OTLP endpoint {endpoint} answered {status}: check OTEL_EXPORTER_OTLP_ENDPOINT "
        f"(or _TRACES_ENDPOINT) and {HEADERS_VARIABLE}; spans stay pending until it accepts them"
    )


def classify(response: requests.Response, endpoint: str) -> ForwardingDeferred | ForwardingRejected:
    status = response.status_code
    if status in _CONFIGURATION_4XX:
        return ForwardingUnauthorized(configuration_message(endpoint, status))
    answer = _answer_text(response)
    if status in _RETRYABLE_4XX or status >= _SERVER_ERROR:
        return ForwardingDeferred(
            f"the OTLP endpoint answered {status}: {answer}",
            parse_retry_after(response.headers.get("Retry-After")),
        )
    return ForwardingRejected(f"the OTLP endpoint answered {status}: {answer}")


class OtlpSender:
    """Posts export requests over one HTTP session; raises unless the backend took it."""

    def __init__(self, settings: OtlpSettings) -> None:
        if settings.endpoint is None:
            raise ValueError("OtlpSender needs an endpoint")
        self.settings = settings
        self.endpoint: str = settings.endpoint
        self.session = requests.Session()
        self.session.headers.update(settings.headers)
        self.session.headers["Content-Type"] = CONTENT_TYPE
        if settings.gzip:
            self.session.headers["Content-Encoding"] = "gzip"

    def __repr__(self) -> str:
        return f"OtlpSender({self.settings!r})"

    def send(self, request: ExportTraceServiceRequest) -> PartialSuccess | None:
        """Export spans to the traces endpoint."""
        return self._post(self.endpoint, request, ExportTraceServiceResponse())

    def send_metrics(self, request: ExportMetricsServiceRequest) -> PartialSuccess | None:
        """Export metrics to the metrics endpoint (the settings must name one)."""
        if self.settings.metrics_endpoint is None:
            raise ValueError("metrics are not configured")
        return self._post(self.settings.metrics_endpoint, request, ExportMetricsServiceResponse())

    def _post(self, endpoint: str, request: Message, answer: Message) -> PartialSuccess | None:
        body = request.SerializeToString()
        if self.settings.gzip:
            body = gzip.compress(body, compresslevel=1)
        try:
            response = self.session.post(
                endpoint, data=body, timeout=self.settings.timeout_s, allow_redirects=False
            )
        except requests.Timeout:
            raise ForwardingDeferred(
                f"the OTLP endpoint {endpoint} did not answer in {self.settings.timeout_s:g} s"
            ) from None
        except requests.ConnectionError:
            raise ForwardingDeferred(f"cannot connect to the OTLP endpoint {endpoint}") from None
        except requests.RequestException as error:
            raise ForwardingDeferred(
                f"request to the OTLP endpoint {endpoint} failed: {type(error).__name__}"
            ) from None
        if not 200 <= response.status_code < 300:
            raise classify(response, endpoint)
        return _partial_success(response.content, answer)

    def close(self) -> None:
        self.session.close()


def _partial_success(body: bytes, answer: Message) -> PartialSuccess | None:
    if not body:
        return None
    try:
        answer.ParseFromString(body)
    except DecodeError:
        # Taken (2xx) all the same; a body we cannot read says nothing more.
        return None
    if not answer.HasField("partial_success"):
        return None
    partial = answer.partial_success  # type: ignore[attr-defined]
    rejected = int(
        partial.rejected_spans
        if isinstance(answer, ExportTraceServiceResponse)
        else partial.rejected_data_points
    )
    if rejected == 0 and not partial.error_message:
        return None
    return PartialSuccess(rejected, str(partial.error_message))
