"""fleettrace: telemetry for fleets of LLM agents.

Agent code records ``LLMTrace`` records and operational metrics through the hooks
or an ``Emitter``; they travel through Redis Streams to the worker sidecar, which
stores them in PostgreSQL and forwards them to LangSmith.
"""

# Private names only: every public name of the package is one of __all__.
import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
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

#: Where each public name lives. They load on first use, as ``import langsmith``'s do:
#: ``import fleettrace`` itself costs an agent's start-up next to nothing, and a
#: process that never records pays for none of it. Using any of them loads the
#: record model (pydantic); redis-py loads with the first emitter and genai-prices
#: with the first price, on the sender thread.
_LAZY: _typing.Final = {
    "hooks": "fleettrace.hooks",
    **dict.fromkeys(("Emitter", "EmitterSettings", "EmitterStats", "configure", "get_emitter"),
                    "fleettrace.emitter"),
    **dict.fromkeys(("ConfigurationError", "EmitterClosed", "EntryDecodeError",
                     "FleettraceError", "PermanentError", "TransientError"), "fleettrace.errors"),
    **dict.fromkeys(("actor", "context_build", "current_plan_token", "decision", "index_query",
                     "llm_call", "phase", "plan", "record_llm_call", "sandbox",
                     "set_hot_context_tokens", "tool"), "fleettrace.hooks"),
    "Keys": "fleettrace.keys",
    **dict.fromkeys(("LiveSeries", "is_over_budget", "plan_cost_usd", "read_live"),
                    "fleettrace.live"),
    **dict.fromkeys(("MetricKey", "MetricSpec", "MetricType"), "fleettrace.metrics"),
    **dict.fromkeys(("LLMTrace", "MetricSample"), "fleettrace.model"),
    **dict.fromkeys(("Pricer", "price_trace"), "fleettrace.pricing"),
    **dict.fromkeys(("PlanRecord", "ToolCall"), "fleettrace.tree_records"),
}  # fmt: skip


def __getattr__(name: str) -> _typing.Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'fleettrace' has no attribute {name!r}")
    module = _importlib.import_module(where)
    value = module if name == "hooks" else getattr(module, name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
