"""GenAI client metrics as OTLP metrics (``FLEETTRACE_OTLP_METRICS=true``)."""

from __future__ import annotations

import threading

import pytest
import redis
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace_worker.forward.otlp.metrics import (
    OPERATION_DURATION,
    TOKEN_BUCKETS,
    TOKEN_USAGE,
    metrics_request,
)
from fleettrace_worker.forward.otlp.settings import OtlpSettings
from fleettrace_worker.keys import OTLP_GROUP
from fleettrace_worker.stream.deadletter import list_dead_letters
from tests.factories import add_traces
from tests.otlp_receiver import GENAI_METRICS, GENAI_NAMES, Fault, OtlpReceiver, check_metrics
from tests.test_otlp import llm_spans, make_loop, pending, settings_for, trace


def points(metric: Metric) -> dict[tuple[tuple[str, str], ...], tuple[int, float, list[int]]]:
    out = {}
    for point in metric.histogram.data_points:
        key = tuple(sorted((kv.key, kv.value.string_value) for kv in point.attributes))
        out[key] = (point.count, point.sum, list(point.bucket_counts))
    return out


def test_token_usage_and_duration_follow_the_conventions() -> None:
    records = [
        trace(prompt_tokens=4, completion_tokens=5, latency_ms=10.0),
        trace(prompt_tokens=1000, completion_tokens=1, latency_ms=30_000.0),
        trace(model="gpt-4o-mini", error="Timeout: slow", latency_ms=200.0),
    ]
    request = metrics_request(records, service_name="s", namespace="n")
    assert request is not None
    assert check_metrics(request) is None
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    assert set(metrics) == {TOKEN_USAGE, OPERATION_DURATION} <= GENAI_METRICS
    tokens, durations = metrics[TOKEN_USAGE], metrics[OPERATION_DURATION]
    assert tokens.unit == "{token}" and durations.unit == "s"
    assert (
        tokens.histogram.aggregation_temporality
        == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    )
    base = (
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o"),
        ("gen_ai.response.model", "gpt-4o"),
    )
    token_points = points(tokens)
    inputs = token_points[tuple(sorted((*base, ("gen_ai.token.type", "input"))))]
    # 4 falls in the bucket (1, 4]; 1000 in (256, 1024].
    assert inputs[0] == 2 and inputs[1] == 1004.0
    assert inputs[2][TOKEN_BUCKETS.index(4.0)] == 1
    assert inputs[2][TOKEN_BUCKETS.index(1024.0)] == 1
    duration_points = points(durations)
    assert duration_points[tuple(sorted(base))][0] == 2
    failed = tuple(
        sorted(
            (
                ("gen_ai.operation.name", "chat"),
                ("gen_ai.provider.name", "openai"),
                ("gen_ai.request.model", "gpt-4o-mini"),
                ("gen_ai.response.model", "gpt-4o-mini"),
                ("error.type", "Timeout"),
            )
        )
    )
    assert duration_points[failed][:2] == (1, 0.2)
    names = {
        kv.key for m in metrics.values() for p in m.histogram.data_points for kv in p.attributes
    }
    assert {n for n in names if n.startswith("gen_ai.")} <= GENAI_NAMES
    assert metrics_request([], service_name="s", namespace="n") is None


def test_metrics_switch_and_endpoint() -> None:
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"}
    assert OtlpSettings.from_env(base).metrics_endpoint is None
    on = OtlpSettings.from_env({**base, "FLEETTRACE_OTLP_METRICS": "true"})
    assert on.metrics_endpoint == "http://127.0.0.1:4318/v1/metrics"
    own = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://a:1/t",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://b:2/m",
        "FLEETTRACE_OTLP_METRICS": "true",
    }
    assert OtlpSettings.from_env(own).metrics_endpoint == "http://b:2/m"
    with pytest.raises(ConfigurationError, match="needs OTEL_EXPORTER_OTLP_ENDPOINT"):
        OtlpSettings.from_env(
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://a:1/t",
                "FLEETTRACE_OTLP_METRICS": "true",
            }
        )
    with pytest.raises(ConfigurationError, match="true or false"):
        OtlpSettings.from_env({**base, "FLEETTRACE_OTLP_METRICS": "yes"})


def test_a_failed_metrics_export_is_retried_without_sending_the_spans_again(
    redis_client: redis.Redis, keys: Keys
) -> None:
    records = [trace() for _ in range(3)]
    add_traces(redis_client, keys, records)
    with OtlpReceiver() as receiver:
        settings = settings_for(receiver, metrics_endpoint=receiver.url + "/v1/metrics")
        # The spans' request passes (no fault for it); the metrics' first request fails.
        receiver.faults.extend([Fault(status=200, reject=lambda spans: []), Fault(503)])
        loop = make_loop(redis_client, keys, settings)
        loop.run(threading.Event())
        loop.close()
        assert len(llm_spans(receiver)) == 3
        assert receiver.received.statuses[503] == 1
        metrics = {m.name: m for m in receiver.metrics()}
        assert set(metrics) == {TOKEN_USAGE, OPERATION_DURATION}
        assert sum(p.count for p in metrics[OPERATION_DURATION].histogram.data_points) == 3
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, OTLP_GROUP) == []
