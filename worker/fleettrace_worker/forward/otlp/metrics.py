"""The GenAI client metrics of a batch of ``LLMTrace`` records, as OTLP metrics.

Sent only when ``FLEETTRACE_OTLP_METRICS=true`` (not every backend takes metrics):

- ``gen_ai.client.token.usage`` (``{token}``), one value per call and token type
  (``gen_ai.token.type`` ``input`` / ``output``), with the conventions' bucket
  boundaries (1, 4, 16, ... 67,108,864);
- ``gen_ai.client.operation.duration`` (``s``), one value per call
  (``latency_ms / 1000``), buckets 0.01 s doubling to 81.92 s, with ``error.type``
  on failed calls.

Both are explicit-bucket histograms with **delta** temporality: each request carries
the calls of one batch, grouped by attribute set (``gen_ai.operation.name``,
``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.response.model``),
from the batch's earliest call start to its latest end. Data points carry no ids a
backend could deduplicate by, so a batch delivered twice (a worker killed between
the backend's 2xx and the acknowledgement) is counted twice; spans do not have this
weakness (docs/otlp.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
    ScopeMetrics,
)

from fleettrace.metrics import GENAI_DURATION_BUCKETS_S
from fleettrace.model import LLMTrace
from fleettrace_worker.forward.otlp.spans import (
    OPERATION_CHAT,
    SCOPE_NAME,
    SCOPE_VERSION,
    end_nanos,
    kv_list,
    nanos,
    resource,
)

TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # noqa: S105 (a metric name)
OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
#: The conventions' advice for gen_ai.client.token.usage.
TOKEN_BUCKETS: Final = tuple(float(4**i) for i in range(14))

_Key = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Series:
    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        # OTLP buckets are (previous bound, bound]: bisect_left puts a value equal to a
        # bound in that bound's bucket.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1
        self.low = min(self.low, value)
        self.high = max(self.high, value)


def _base(record: LLMTrace) -> _Key:
    return (
        ("gen_ai.operation.name", OPERATION_CHAT),
        ("gen_ai.provider.name", record.provider),
        ("gen_ai.request.model", record.model),
        ("gen_ai.response.model", record.model),
    )


def _histogram(
    name: str, unit: str, description: str, series: dict[_Key, _Series], *, span: tuple[int, int]
) -> Metric:
    start, end = span
    points = [
        HistogramDataPoint(
            attributes=kv_list(list(key)),
            start_time_unix_nano=start,
            time_unix_nano=end,
            count=one.count,
            sum=one.total,
            bucket_counts=one.counts,
            explicit_bounds=list(one.bounds),
            min=one.low,
            max=one.high,
        )
        for key, one in series.items()
    ]
    return Metric(
        name=name,
        unit=unit,
        description=description,
        histogram=Histogram(
            data_points=points,
            aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA,
        ),
    )


def metrics_request(
    records: Sequence[LLMTrace], *, service_name: str, namespace: str
) -> ExportMetricsServiceRequest | None:
    """The two histograms over ``records``; None when there are none."""
    if not records:
        return None
    tokens: dict[_Key, _Series] = {}
    durations: dict[_Key, _Series] = {}
    for record in records:
        base = _base(record)
        for kind, value in (("input", record.prompt_tokens), ("output", record.completion_tokens)):
            if value is None:  # not reported by the provider: no observation
                continue
            key = (*base, ("gen_ai.token.type", kind))
            tokens.setdefault(key, _Series(TOKEN_BUCKETS)).add(float(value))
        error_type = record.error_type
        key = (*base, ("error.type", error_type)) if error_type is not None else base
        durations.setdefault(key, _Series(GENAI_DURATION_BUCKETS_S)).add(record.latency_ms / 1000)
    start = min(nanos(r.started_at) for r in records)
    end = max(end_nanos(r) for r in records)
    scope = ScopeMetrics(
        scope=InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION),
        metrics=[
            _histogram(
                TOKEN_USAGE,
                "{token}",
                "Number of input and output tokens used",
                tokens,
                span=(start, end),
            ),
            _histogram(
                OPERATION_DURATION, "s", "GenAI operation duration", durations, span=(start, end)
            ),
        ],
    )
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(resource=resource(service_name, namespace), scope_metrics=[scope])
        ]
    )
