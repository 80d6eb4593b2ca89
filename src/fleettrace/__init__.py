"""fleettrace: telemetry for fleets of LLM agents.

Agent code records ``LLMTrace`` records and operational metrics through the hooks
or an ``Emitter``; they travel through Redis Streams to the worker sidecar, which
stores them in PostgreSQL and forwards them to LangSmith.
"""

from fleettrace.errors import (
    ConfigurationError,
    EmitterClosed,
    EntryDecodeError,
    FleettraceError,
    PermanentError,
    TransientError,
)
from fleettrace.keys import Keys
from fleettrace.metrics import MetricKey, MetricSpec, MetricType
from fleettrace.model import LLMTrace, MetricSample

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "EmitterClosed",
    "EntryDecodeError",
    "FleettraceError",
    "Keys",
    "LLMTrace",
    "MetricKey",
    "MetricSample",
    "MetricSpec",
    "MetricType",
    "PermanentError",
    "TransientError",
    "__version__",
]
