"""What the hooks cost agent code, on realistic calls, next to OpenTelemetry, LangSmith
and Langfuse measured in the same run; the emitter's memory for hook-made records;
and where a hook-made record's time goes, stage by stage.

The calls come from :class:`benchmarks.load.records.HookWorkload`: plans of 25 calls
with tags and metadata every call inherits, a decision and an actor around each call,
varied token counts (no price-cache hits), 30 % streaming (``first_token()``), 5 %
failing inside the block and retried once. Each is timed on its own
(``perf_counter_ns`` around it; about 0.1 µs of each figure is the clock), in a fresh
process whose default emitter (``fleettrace.configure``) sends to the run's Redis
meanwhile, so the sender thread competes for the interpreter as it does in an agent.

- LLM hook: ``with actor.llm(provider, model, ...) as call: call.update(**usage)``
  (plus ``first_token()`` when streaming; a failing call's time includes raising
  and catching its exception), cost left to fleettrace.
- tool hook: ``with fleettrace.tool(name): pass``.
- actor hook: ``fleettrace.actor(name)`` made, entered and exited, the work inside
  not counted (two clock reads more than the others).
- OpenTelemetry: an SDK span with the same attributes as the call (provider, model,
  tokens, plan, decision, actor, tags, metadata, streaming, retries; an error status
  for the failing ones) through a ``BatchSpanProcessor`` to an exporter that discards.
- ``@traceable`` (LangSmith) and ``@observe`` (Langfuse) no-ops with tracing on,
  against :mod:`benchmarks.load.sink` on loopback.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import urllib.request
from typing import Any, Final

from benchmarks.load import isolated
from benchmarks.load.context import RunContext
from benchmarks.load.hook_stages import stage_profile
from benchmarks.load.hotpath import _start_sink, measure_traceable
from benchmarks.load.memory import MB, _closed_port, _rss_bytes
from benchmarks.load.records import (
    ACTORS,
    PLAN_METADATA,
    PLAN_TAGS,
    TOOLS,
    HookWorkload,
    RateLimited,
)
from benchmarks.load.stats import latency_summary_us

WARMUP_CALLS: Final = 3_000


#: Plans run back to back before the emitter is let catch up (1,000 LLM calls).
BURST_PLANS: Final = 40


def drive(workload: HookWorkload) -> dict[str, list[int]]:
    """Run the workload's calls through the hooks of the default emitter; the time
    of each LLM, tool and actor hook in nanoseconds.

    The calls come in bursts of ``BURST_PLANS`` plans, each followed by a flush (not
    timed): a loop of nothing but hooks makes records several times faster than one
    sender thread prices and sends them, which no agent waiting on LLM calls does,
    and a buffer kept at its bound would time the overflow, not the hooks."""
    import fleettrace

    emitter = fleettrace.get_emitter()

    clock = time.perf_counter_ns
    llm_ns: list[int] = []
    tool_ns: list[int] = []
    actor_ns: list[int] = []
    plan, decision, actor, tool = (
        fleettrace.plan,
        fleettrace.decision,
        fleettrace.actor,
        fleettrace.tool,
    )
    turn = 0
    for number, calls in enumerate(workload.plans(), 1):
        if number % BURST_PLANS == 0:
            emitter.flush(60)
        with plan(tags=PLAN_TAGS, metadata=PLAN_METADATA):
            for provider, model, usage, streaming, fails in calls:
                turn += 1
                with decision():
                    started = clock()
                    with actor(ACTORS[turn % len(ACTORS)]) as agent:
                        entered = clock()
                        retries = 0
                        if fails:
                            began = clock()
                            try:
                                with agent.llm(provider, model, streaming=streaming):
                                    raise RateLimited("RateLimitError: slow down")
                            except RateLimited:
                                pass
                            llm_ns.append(clock() - began)
                            retries = 1
                        began = clock()
                        with agent.llm(
                            provider, model, streaming=streaming, retry_count=retries
                        ) as call:
                            if streaming:
                                call.first_token()
                            call.update(**usage)
                        llm_ns.append(clock() - began)
                        began = clock()
                        with tool(TOOLS[turn % len(TOOLS)]):
                            pass
                        tool_ns.append(clock() - began)
                        leaving = clock()
                    actor_ns.append(entered - started + clock() - leaving)
    return {"llm": llm_ns, "tool": tool_ns, "actor": actor_ns}


def measure_hooks(redis_url: str, namespace: str, calls: int) -> dict[str, Any]:
    import redis

    import fleettrace
    from fleettrace.batch_script import load_library

    load_library(redis.Redis.from_url(redis_url))  # as `fleettrace migrate` would
    emitter = fleettrace.configure(redis_url, namespace)
    drive(HookWorkload(WARMUP_CALLS, seed=1))
    assert emitter.flush(60)
    gc.collect()
    timings = drive(HookWorkload(calls))
    flushed = emitter.flush(120)
    stats = emitter.stats
    emitter.close()
    return {
        **{name: latency_summary_us(samples) for name, samples in timings.items()},
        "flushed": flushed,
        "accepted": stats.accepted,
        "sent": stats.sent,
        "dropped": stats.dropped,
        "rejected": stats.rejected,
    }


def measure_otel(calls: int) -> dict[str, Any]:
    """An OpenTelemetry SDK span per call with the call's attributes."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import Status, StatusCode

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracer = provider.get_tracer("fleettrace.bench")
    error = Status(StatusCode.ERROR, "RateLimitError: slow down")

    def run(workload: HookWorkload) -> list[int]:
        clock = time.perf_counter_ns
        samples = []
        for turn, (provider_name, model, usage, streaming, fails) in enumerate(workload.calls):
            started = clock()
            with tracer.start_as_current_span(
                f"chat {model}",
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": provider_name,
                    "gen_ai.request.model": model,
                    "fleettrace.plan_id": "plan-1",
                    "fleettrace.decision_id": "decision-1",
                    "fleettrace.actor": ACTORS[turn % len(ACTORS)],
                    "fleettrace.tags": PLAN_TAGS,
                    "fleettrace.metadata.tenant": "acme",
                    "fleettrace.metadata.priority": 2,
                    "fleettrace.streaming": streaming,
                },
            ) as span:
                span.set_attributes(
                    {
                        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
                        "gen_ai.usage.output_tokens": usage["completion_tokens"],
                        "fleettrace.retry_count": int(fails),
                    }
                )
                if fails:
                    span.set_status(error)
            samples.append(clock() - started)
        return samples

    run(HookWorkload(WARMUP_CALLS, seed=1))
    gc.collect()
    samples = run(HookWorkload(calls))
    provider.shutdown()
    return latency_summary_us(samples)


def measure_observe(endpoint: str, calls: int) -> dict[str, Any]:
    """Langfuse's ``@observe`` no-op (a generation) with tracing on."""
    os.environ.update(
        {
            "LANGFUSE_PUBLIC_KEY": "pk-lf-local-sink",
            "LANGFUSE_SECRET_KEY": "sk-lf-local-sink",
            "LANGFUSE_HOST": endpoint,
            "LANGFUSE_BASE_URL": endpoint,
            "LANGFUSE_TRACING_ENABLED": "true",
        }
    )
    from langfuse import get_client, observe

    @observe(name="noop", as_type="generation")
    def noop(value: int) -> int:
        return value

    clock = time.perf_counter_ns
    for index in range(min(WARMUP_CALLS, calls)):
        noop(index)
    gc.collect()
    samples = []
    for index in range(calls):
        started = clock()
        noop(index)
        samples.append(clock() - started)
    get_client().flush()
    return latency_summary_us(samples)


def measure_memory(calls: int) -> dict[str, Any]:
    """Resident memory the emitter's buffer takes for ``calls`` hook-made LLM calls
    that cannot leave it (Redis is a closed port; the buffer holds them all), inside
    plans with tags and metadata, as :func:`drive` makes them."""
    import fleettrace

    logging.getLogger("fleettrace.emitter").setLevel(logging.CRITICAL)
    workload = HookWorkload(calls)
    emitter = fleettrace.configure(
        f"redis://127.0.0.1:{_closed_port()}/0",
        "bench-memory",
        producer="bench",  # no ACL WHOAMI: the sender holds a batch as it would to send
        max_buffer_records=2 * calls,
        socket_timeout_s=0.2,
    )
    gc.collect()
    before = _rss_bytes()
    for plan_calls in workload.plans():
        with (
            fleettrace.plan(tags=PLAN_TAGS, metadata=PLAN_METADATA),
            fleettrace.actor("planner") as agent,
        ):
            for provider, model, usage, streaming, _ in plan_calls:
                with agent.llm(provider, model, streaming=streaming) as call:
                    call.update(**usage)
    gc.collect()
    after = _rss_bytes()
    buffered = emitter.stats.buffered
    emitter.close(timeout_s=0.5)
    return {
        "calls": calls,
        "buffered": buffered,
        "emitter_mb": round((after - before) / MB, 2),
        "bytes_per_record": round((after - before) / max(buffered, 1)),
        "mb_per_100k": round((after - before) / MB / max(buffered, 1) * 100_000, 2),
    }


def run(ctx: RunContext) -> dict[str, Any]:
    calls = ctx.sizes.hook_calls
    result: dict[str, Any] = {}
    if ctx.fleettrace_ready:
        keys = ctx.namespace("hooks")
        result["fleettrace"] = isolated.call(
            measure_hooks, ctx.redis_url, keys.namespace, calls, timeout_s=600
        )
        ctx.drop_namespace(keys)
        result["memory"] = isolated.call(
            measure_memory, ctx.sizes.emitter_buffer_records, timeout_s=300
        )
        result["stages"] = isolated.call(
            stage_profile, ctx.redis_url, min(calls, 5_000), timeout_s=300
        )
    result["otel_span"] = isolated.call(measure_otel, calls, timeout_s=600)
    sink, endpoint = _start_sink()
    try:
        result["traceable"] = isolated.call(
            measure_traceable, endpoint, ctx.sizes.traceable_calls, timeout_s=300
        )
        try:
            import langfuse  # noqa: F401
        except ImportError as error:
            result["observe"] = {"unavailable": f"langfuse is not installed ({error})"}
        else:
            result["observe"] = isolated.call(
                measure_observe, endpoint, ctx.sizes.traceable_calls, timeout_s=300
            )
        with urllib.request.urlopen(f"{endpoint}/_posts", timeout=5) as answer:
            result["sink_posts"] = int(answer.read())
    finally:
        sink.terminate()
        sink.wait(10)
    return result
