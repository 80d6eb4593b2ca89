"""``FleettraceSpanProcessor``: spans that follow the OpenTelemetry GenAI conventions
become fleettrace records.

    from opentelemetry.sdk.trace import TracerProvider
    from fleettrace.integrations import FleettraceSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(FleettraceSpanProcessor())

Any GenAI instrumentor already in place (OpenLLMetry's, OpenInference's, the OTel
contrib ones) then feeds fleettrace without another wrapper. A span whose
``gen_ai.operation.name`` is an inference (``chat``, ``text_completion``,
``generate_content``, ``embeddings``) is an LLM call; ``execute_tool`` is a tool
invocation (duration and outcome); other GenAI operations (``invoke_agent``...) and
every span without GenAI attributes are ignored: one dictionary lookup per span.

The plan, decision and actor are those open where the span ends (the code that ends
an instrumentor's span is the agent's own call). ``gen_ai.usage.input_tokens`` is
taken as the whole input, cached part included, as the conventions ask.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import StatusCode

from fleettrace import hooks
from fleettrace.emitter import Emitter, hook_emitter
from fleettrace.integrations._calls import Call, CallObserver, first_claim, tokens
from fleettrace.metrics import MetricKey
from fleettrace.model import MAX_ERROR_CHARS, MAX_NAME_CHARS

logger = logging.getLogger("fleettrace.integrations")

OPERATION: Final = "gen_ai.operation.name"
INFERENCE_OPERATIONS: Final = frozenset(
    {"chat", "text_completion", "generate_content", "embeddings", "completion"}
)
TOOL_OPERATION: Final = "execute_tool"
_NS_PER_MS: Final = 1_000_000


def _first(attributes: Any, *names: str) -> Any:
    for name in names:
        value = attributes.get(name)
        if value is not None:
            return value
    return None


class FleettraceSpanProcessor(SpanProcessor):
    """Turns ended GenAI spans into ``LLMTrace`` records and tool metrics."""

    def __init__(
        self,
        *,
        provider: str | None = None,
        emitter: Emitter | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        self._provider = provider
        self._emitter = emitter
        self._on_call = on_call

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes
        if not attributes:
            return
        operation = attributes.get(OPERATION)
        if operation is None:
            return
        context = span.context
        if context is not None and not first_claim((context.trace_id, context.span_id)):
            return  # a second processor installed beside this one
        try:
            if operation in INFERENCE_OPERATIONS:
                self._record_call(span, attributes)
            elif operation == TOOL_OPERATION:
                self._record_tool(span, attributes)
        except Exception:
            logger.warning("fleettrace: cannot record a GenAI span", exc_info=True)

    def shutdown(self) -> None:
        """Nothing of its own to release: records go through the emitter."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._target().flush(timeout_millis / 1000)

    def _target(self) -> Emitter:
        return hook_emitter(self._emitter)

    def _record_call(self, span: ReadableSpan, attributes: Any) -> None:
        provider = self._provider or _first(attributes, "gen_ai.provider.name", "gen_ai.system")
        model = _first(attributes, "gen_ai.response.model", "gen_ai.request.model")
        call = Call(
            _text(provider, "unknown"), _text(model, "unknown"), self._emitter, self._on_call
        )
        if span.start_time is not None:
            call.started_at = datetime.fromtimestamp(span.start_time / 1e9, UTC)
            if span.end_time is not None:
                call.latency_ms = max(0, span.end_time - span.start_time) / _NS_PER_MS
        call.prompt_tokens = tokens(
            _first(attributes, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
        )
        call.completion_tokens = tokens(
            _first(attributes, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
        )
        call.cache_read_tokens = tokens(attributes.get("gen_ai.usage.cache_read.input_tokens"))
        call.cache_write_tokens = tokens(attributes.get("gen_ai.usage.cache_creation.input_tokens"))
        call.reasoning_tokens = tokens(attributes.get("gen_ai.usage.reasoning.output_tokens"))
        first_chunk_s = attributes.get("gen_ai.response.time_to_first_chunk")
        if isinstance(first_chunk_s, int | float):
            call.ttft_ms = float(first_chunk_s) * 1000
        call.streaming = bool(_first(attributes, "gen_ai.request.stream", "llm.is_streaming"))
        call.error = _error_of(span, attributes)
        call.finish()

    def _record_tool(self, span: ReadableSpan, attributes: Any) -> None:
        name = _text(attributes.get("gen_ai.tool.name") or span.name, "tool")
        elapsed_ms = 0.0
        if span.start_time is not None and span.end_time is not None:
            elapsed_ms = max(0, span.end_time - span.start_time) / _NS_PER_MS
        failed = span.status.status_code is StatusCode.ERROR or "error.type" in attributes
        plan_id = hooks.current_plan_id()
        emitter = self._target()
        emitter.observe(
            MetricKey.TOOL_INVOCATION_DURATION_MS, elapsed_ms, {"tool": name}, plan_id=plan_id
        )
        outcome = "error" if failed else "ok"
        emitter.observe(
            MetricKey.TOOL_ERROR_RATE, 1, {"tool": name, "outcome": outcome}, plan_id=plan_id
        )


def _error_of(span: ReadableSpan, attributes: Any) -> str | None:
    """``"<error.type>: <status description>"``, the form the hooks record, or None."""
    kind = attributes.get("error.type")
    if span.status.status_code is not StatusCode.ERROR and kind is None:
        return None
    return f"{_text(kind, 'error')}: {span.status.description or ''}"[:MAX_ERROR_CHARS]


def _text(value: object, default: str) -> str:
    if isinstance(value, str) and value and "\x00" not in value:
        return value[:MAX_NAME_CHARS]
    return default
