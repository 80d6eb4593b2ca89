"""The 17 operational metric keys and everything known about each, in one table.

Each key declares its type, unit and label names; histograms declare their classic
bucket bounds (Prometheus ``le``; the live quantiles come from finer sketch buckets
that respect these bounds, see :mod:`fleettrace.sketch`). The emitter, the live
reader, the Prometheus exporter and the docs all read this table, so a key is
described exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

#: The label that ties a series to one plan. A metric with it is counted per plan, in
#: that plan's own expiring hash (see :meth:`fleettrace.keys.Keys.plan`).
PLAN_LABEL: Final = "plan"


class MetricType(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


#: OpenTelemetry GenAI ``gen_ai.client.operation.duration`` buckets: 0.01 s doubling
#: to 81.92 s.
GENAI_DURATION_BUCKETS_S: Final = tuple(0.01 * 2**i for i in range(14))
GENAI_DURATION_BUCKETS_MS: Final = tuple(round(b * 1000, 6) for b in GENAI_DURATION_BUCKETS_S)
#: Short operations (tools, context, index, sandbox) in milliseconds.
FAST_BUCKETS_MS: Final = (
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
)
#: Whole plans and phases of plans in seconds: the GenAI buckets stretched to an hour.
PLAN_BUCKETS_S: Final = (*GENAI_DURATION_BUCKETS_S, 300.0, 900.0, 3600.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """What one metric key measures and how it is labelled."""

    key: str
    type: MetricType
    unit: str
    labels: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] = ()

    @property
    def per_plan(self) -> bool:
        """Whether each plan gets series of its own (the labels include ``plan``)."""
        return PLAN_LABEL in self.labels

    def bucket_bound(self, value: float) -> float:
        """The upper bound of the bucket ``value`` falls into (``inf`` past the last)."""
        for bound in self.buckets:
            if value <= bound:
                return bound
        return math.inf


class MetricKey(StrEnum):
    """The operational metric keys. ``MetricKey.X.spec`` tells everything about X."""

    PLAN_DURATION_SECONDS = "plan.duration_seconds"
    PLAN_COST_USD = "plan.cost_usd"
    PLAN_DECISIONS_COUNT = "plan.decisions_count"
    PLAN_CHILD_PLANS_COUNT = "plan.child_plans_count"
    PLAN_BUDGET_USD = "plan.budget_usd"
    ACTOR_INVOCATION_DURATION_MS = "actor.invocation_duration_ms"
    ACTOR_TOKEN_USAGE = "actor.token_usage"  # noqa: S105 (a metric name, not a secret)
    TOOL_INVOCATION_DURATION_MS = "tool.invocation_duration_ms"
    TOOL_ERROR_RATE = "tool.error_rate"
    CONTEXT_BUILD_DURATION_MS = "context.build_duration_ms"
    CONTEXT_TOKENS_USED = "context.tokens_used"
    INDEX_QUERY_DURATION_MS = "index.query_duration_ms"
    SANDBOX_OPERATION_DURATION_MS = "sandbox.operation_duration_ms"
    LLM_RETRIES_COUNT = "llm.retries_count"
    LLM_ERRORS_COUNT = "llm.errors_count"
    LLM_LATENCY_MS = "llm.latency_ms"
    LLM_COST_USD = "llm.cost_usd"

    @property
    def spec(self) -> MetricSpec:
        return SPECS[self]


_C, _G, _H = MetricType.COUNTER, MetricType.GAUGE, MetricType.HISTOGRAM

SPECS: Final[dict[MetricKey, MetricSpec]] = {
    MetricKey(spec.key): spec
    for spec in (
        MetricSpec(
            "plan.duration_seconds",
            _H,
            "s",
            ("phase",),
            "Wall time of a plan phase; phase 'total' is the whole plan.",
            PLAN_BUCKETS_S,
        ),
        MetricSpec(
            "plan.cost_usd",
            _C,
            "USD",
            ("plan",),
            "Priced LLM cost accumulated by a plan, from its LLMTrace records.",
        ),
        MetricSpec("plan.decisions_count", _C, "1", ("plan",), "Decisions taken inside a plan."),
        MetricSpec(
            "plan.child_plans_count",
            _C,
            "1",
            ("plan",),
            "Plans started while this plan was the current one.",
        ),
        MetricSpec(
            "plan.budget_usd",
            _G,
            "USD",
            ("plan",),
            "The budget a plan was given (hooks.plan(budget_usd=...)), last value set.",
        ),
        MetricSpec(
            "actor.invocation_duration_ms",
            _H,
            "ms",
            ("actor",),
            "Wall time of one actor invocation (GenAI operation duration buckets).",
            GENAI_DURATION_BUCKETS_MS,
        ),
        MetricSpec(
            "actor.token_usage",
            _C,
            "tokens",
            ("provider", "model", "token_type"),
            "Tokens used by LLM calls; token_type is 'prompt', 'completion', a detail "
            "('cache_read', 'cache_write', 'reasoning', 'audio_input', 'audio_output') "
            "or 'unknown' (calls whose usage was not reported).",
        ),
        MetricSpec(
            "tool.invocation_duration_ms",
            _H,
            "ms",
            ("tool",),
            "Wall time of one tool execution.",
            FAST_BUCKETS_MS,
        ),
        MetricSpec(
            "tool.error_rate",
            _C,
            "1",
            ("tool", "outcome"),
            "Tool executions by outcome ('ok' or 'error'): rate = error / (ok + error).",
        ),
        MetricSpec(
            "context.build_duration_ms",
            _H,
            "ms",
            ("tier",),
            "Time to build context from a tier ('hot', 'warm' or 'cold').",
            FAST_BUCKETS_MS,
        ),
        MetricSpec(
            "context.tokens_used",
            _G,
            "tokens",
            (),
            "Tokens currently held in the hot context (last value set).",
        ),
        MetricSpec(
            "index.query_duration_ms",
            _H,
            "ms",
            ("backend",),
            "Index query time by backend ('text', 'vector' or 'graph').",
            FAST_BUCKETS_MS,
        ),
        MetricSpec(
            "sandbox.operation_duration_ms",
            _H,
            "ms",
            ("operation",),
            "Sandbox operation time ('create', 'commit' or 'rollback').",
            FAST_BUCKETS_MS,
        ),
        MetricSpec(
            "llm.retries_count",
            _C,
            "1",
            ("provider", "model"),
            "Retries made by LLM calls (the sum of LLMTrace.retry_count).",
        ),
        MetricSpec(
            "llm.errors_count",
            _C,
            "1",
            ("provider", "model", "error_type"),
            "LLM calls that ended in an error, by error type.",
        ),
        MetricSpec(
            "llm.latency_ms",
            _H,
            "ms",
            ("provider", "model"),
            "Latency of every LLM call (LLMTrace.latency_ms); its count is the calls.",
            GENAI_DURATION_BUCKETS_MS,
        ),
        MetricSpec(
            "llm.cost_usd",
            _C,
            "USD",
            ("provider", "model"),
            "Priced cost of LLM calls; its count is the priced calls (unpriced calls "
            "add nothing: they are the llm.latency_ms count less this count).",
        ),
    )
}

#: The metric keys counted per plan, in table order.
PER_PLAN_KEYS: Final = tuple(key for key, spec in SPECS.items() if spec.per_plan)
