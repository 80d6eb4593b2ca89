"""The agent's hot path: what one ``record()`` costs the caller, with the emitter's
sender thread running and sending to Redis, next to the usual alternatives measured
in the same run: a ``langsmith`` ``@traceable`` no-op with tracing on (against
:mod:`benchmarks.load.sink`) and an OpenTelemetry SDK span with 15 attributes
through a ``BatchSpanProcessor`` to an exporter that discards.

Each runs in its own fresh process; every call is timed on its own
(``perf_counter_ns`` around the call, about 0.1 µs of it is the clock).
"""

from __future__ import annotations

import gc
import itertools
import os
import subprocess
import sys
import time
import urllib.request
from collections import deque
from typing import Any, Final

from benchmarks.load import drivers, isolated
from benchmarks.load.context import RunContext
from benchmarks.load.records import TraceFactory
from benchmarks.load.stats import latency_summary_us

WARMUP_CALLS: Final = 2_000
_SPAN_ATTRIBUTES: Final = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 350,
    "gen_ai.response.finish_reasons": ("stop",),
    "fleettrace.plan_id": "plan-1",
    "fleettrace.decision_id": "decision-1",
    "fleettrace.actor": "actor-1",
    "fleettrace.cost_usd": 0.0065,
    "fleettrace.latency_ms": 812.5,
    "fleettrace.streaming": False,
    "fleettrace.retry_count": 0,
    "fleettrace.context_hash": "0" * 64,
}


def _timed(func: Any, args_cycle: Any, calls: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = [0] * calls
    for index in range(calls):
        arg = next(args_cycle)
        start = clock()
        func(arg)
        samples[index] = clock() - start
    return samples


def measure_record(redis_url: str, namespace: str, calls: int) -> dict[str, Any]:
    """``Emitter.record(trace)`` on a prebuilt ``LLMTrace``; and, as the hooks do,
    building the ``LLMTrace`` and recording it."""
    made = drivers.traces(min(calls, drivers.DISTINCT_RECORDS))
    emitter = drivers._emitter(redis_url, namespace)
    record = emitter.record
    _timed(record, itertools.cycle(made), WARMUP_CALLS)
    gc.collect()
    samples = _timed(record, itertools.cycle(made), calls)
    from fleettrace.model import LLMTrace

    factory = TraceFactory()
    field_sets = [factory.fields() for _ in range(min(calls, drivers.DISTINCT_RECORDS))]
    build_and_record = _timed(
        lambda fields: record(LLMTrace(**fields)), itertools.cycle(field_sets), calls // 5
    )
    emitter.flush(timeout_s=60)
    stats = emitter.stats
    emitter.close()
    return {
        "record": latency_summary_us(samples),
        "build_and_record": latency_summary_us(build_and_record),
        "sent": stats.sent,
        "dropped": stats.dropped,
    }


def measure_dict_deque(calls: int) -> dict[str, Any]:
    """The floor: a dict built and appended to a deque."""
    buffer: deque[dict[str, Any]] = deque(maxlen=100_000)
    factory = TraceFactory()
    field_sets = [factory.fields() for _ in range(1000)]
    append = buffer.append
    return latency_summary_us(_timed(lambda f: append(dict(f)), itertools.cycle(field_sets), calls))


def measure_traceable(endpoint: str, calls: int) -> dict[str, Any]:
    os.environ.update(
        {
            "LANGSMITH_TRACING": "true",
            "LANGSMITH_ENDPOINT": endpoint,
            "LANGSMITH_API_KEY": "lsv2-local-sink",
            "LANGSMITH_PROJECT": "fleettrace-bench",
        }
    )
    from langsmith import traceable
    from langsmith.run_trees import get_cached_client

    @traceable(run_type="llm", name="noop")
    def noop(value: int) -> int:
        return value

    _timed(noop, itertools.count(), min(WARMUP_CALLS, calls))
    gc.collect()
    samples = _timed(noop, itertools.count(), calls)
    get_cached_client().flush()
    return latency_summary_us(samples)


def measure_otel(calls: int) -> dict[str, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracer = provider.get_tracer("fleettrace.bench")

    def span(_: int) -> None:
        with tracer.start_as_current_span("chat gpt-4o", attributes=_SPAN_ATTRIBUTES):
            pass

    _timed(span, itertools.count(), WARMUP_CALLS)
    gc.collect()
    samples = _timed(span, itertools.count(), calls)
    provider.shutdown()
    return latency_summary_us(samples)


def _start_sink() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.load.sink"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def run(ctx: RunContext) -> dict[str, Any]:
    sizes = ctx.sizes
    result: dict[str, Any] = {}
    if ctx.fleettrace_ready:
        keys = ctx.namespace("hotpath")
        result.update(
            isolated.call(
                measure_record, ctx.redis_url, keys.namespace, sizes.hotpath_calls, timeout_s=300
            )
        )
        ctx.drop_namespace(keys)
    keys = ctx.namespace("hotpath-baseline")
    result["baseline_record"] = isolated.call(
        measure_baseline_record, ctx.redis_url, keys.namespace, sizes.hotpath_calls, timeout_s=300
    )
    ctx.drop_namespace(keys)
    result["dict_deque"] = isolated.call(measure_dict_deque, sizes.hotpath_calls, timeout_s=120)
    sink, endpoint = _start_sink()
    try:
        result["traceable"] = isolated.call(
            measure_traceable, endpoint, sizes.traceable_calls, timeout_s=300
        )
        with urllib.request.urlopen(f"{endpoint}/_posts", timeout=5) as answer:
            result["traceable"]["posts_received"] = int(answer.read())
    finally:
        sink.terminate()
        sink.wait(10)
    result["otel_span"] = isolated.call(measure_otel, sizes.otel_calls, timeout_s=300)
    return result


def measure_baseline_record(redis_url: str, namespace: str, calls: int) -> dict[str, Any]:
    """The baseline's hot path: the caller writes its own pipeline, and every 500th
    call waits for Redis."""
    from benchmarks.load.baseline import PacedSender

    factory = TraceFactory()
    field_sets = [factory.fields() for _ in range(min(calls, drivers.DISTINCT_RECORDS))]
    sender = PacedSender(redis_url, namespace)
    send = sender.send
    _timed(send, itertools.cycle(field_sets), WARMUP_CALLS)
    gc.collect()
    samples = _timed(send, itertools.cycle(field_sets), calls)
    sender.close()
    return latency_summary_us(samples)
