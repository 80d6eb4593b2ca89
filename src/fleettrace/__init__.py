"""fleettrace: telemetry for fleets of LLM agents.

Agent code records ``LLMTrace`` records and operational metrics through the hooks
or an ``Emitter``; they travel through Redis Streams to the worker sidecar, which
stores them in PostgreSQL and forwards them to LangSmith.
"""

from fleettrace import hooks
from fleettrace.emitter import Emitter, EmitterSettings, EmitterStats, configure, get_emitter
from fleettrace.errors import (
    ConfigurationError,
    EmitterClosed,
    EntryDecodeError,
    FleettraceError,
    PermanentError,
    TransientError,
)
from fleettrace.hooks import (
    actor,
    context_build,
    current_plan_token,
    decision,
    index_query,
    llm_call,
    phase,
    plan,
    record_llm_call,
    sandbox,
    set_hot_context_tokens,
    tool,
)
from fleettrace.keys import Keys
from fleettrace.live import LiveSeries, is_over_budget, plan_cost_usd, read_live
from fleettrace.metrics import MetricKey, MetricSpec, MetricType
from fleettrace.model import LLMTrace, MetricSample
from fleettrace.pricing import Pricer, price_trace
from fleettrace.tree_records import PlanRecord, ToolCall

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "Emitter",
    "EmitterClosed",
    "EmitterSettings",
    "EmitterStats",
    "EntryDecodeError",
    "FleettraceError",
    "Keys",
    "LLMTrace",
    "LiveSeries",
    "MetricKey",
    "MetricSample",
    "MetricSpec",
    "MetricType",
    "PermanentError",
    "PlanRecord",
    "Pricer",
    "ToolCall",
    "TransientError",
    "__version__",
    "actor",
    "configure",
    "context_build",
    "current_plan_token",
    "decision",
    "get_emitter",
    "hooks",
    "index_query",
    "is_over_budget",
    "llm_call",
    "phase",
    "plan",
    "plan_cost_usd",
    "price_trace",
    "read_live",
    "record_llm_call",
    "sandbox",
    "set_hot_context_tokens",
    "tool",
]
