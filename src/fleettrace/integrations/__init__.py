"""Recording LLM calls without hand-wiring: provider clients, LangChain, OpenTelemetry.

    from fleettrace.integrations import wrap_openai
    client = wrap_openai(OpenAI())          # every call it makes is now recorded

Each integration is its own module, loaded when its name is first used, and needs
its library only then (``pip install 'fleettrace[openai]'``, ``[anthropic]``,
``[langchain]``, ``[otel]``): importing ``fleettrace`` or this package imports none
of them. See docs/integrations.md for what each records and its limits.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fleettrace.integrations._calls import Call, CallObserver
from fleettrace.integrations._clients import is_wrapped, unwrap

if TYPE_CHECKING:
    from fleettrace.integrations.anthropic import wrap_anthropic
    from fleettrace.integrations.langchain import FleettraceCallbackHandler
    from fleettrace.integrations.openai import wrap_openai
    from fleettrace.integrations.otel import FleettraceSpanProcessor

_LAZY = {
    "wrap_openai": "fleettrace.integrations.openai",
    "wrap_anthropic": "fleettrace.integrations.anthropic",
    "FleettraceCallbackHandler": "fleettrace.integrations.langchain",
    "FleettraceSpanProcessor": "fleettrace.integrations.otel",
}

__all__ = [
    "Call",
    "CallObserver",
    "FleettraceCallbackHandler",
    "FleettraceSpanProcessor",
    "is_wrapped",
    "unwrap",
    "wrap_anthropic",
    "wrap_openai",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fleettrace.integrations' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
