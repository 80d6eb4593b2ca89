"""The one place tests build records and stream entries.

    llm_trace(shape, **fields)    an LLM call: openai gpt-4o, every other field from
                                  ``shape`` (a dict, optional) and ``fields``, else
                                  LLMTrace's default
    numbered_trace(i, shape, **fields)
                                  the i-th of a varied run: plan, decision, tokens, latency
                                  and tool calls differ with i, the same for the same i
    metric_sample(**fields)       one tool.invocation_duration_ms observation
    numbered_sample(i, **fields)  the same with value float(i)
    trace_entry / sample_entry    the fields of one stream entry in the real format
    add_traces / add_samples      XADD such an entry; its id

In every builder ``fields`` win over ``shape`` and the defaults, so a test names exactly
the values its assertions depend on. A module whose tests share more fields keeps them
in a module-level dict passed as the shape: ``llm_trace(CALL, prompt_tokens=i)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from fleettrace.codec import Kind, encode_batch, new_batch_id
from fleettrace.keys import Keys
from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace, MetricSample


def llm_trace(shape: Mapping[str, Any] | None = None, /, **fields: Any) -> LLMTrace:
    """An LLM call of openai's gpt-4o unless ``shape`` or ``fields`` say otherwise."""
    return LLMTrace(**{"provider": "openai", "model": "gpt-4o", **(shape or {}), **fields})


def numbered_trace(i: int, shape: Mapping[str, Any] | None = None, /, **fields: Any) -> LLMTrace:
    """The i-th call of a varied run (seven plans, a tool call every third call)."""
    varied: dict[str, Any] = {
        "plan_id": f"plan-{i % 7}",
        "decision_id": f"d-{i}",
        "actor": "planner",
        "prompt_tokens": 100 + i % 50,
        "completion_tokens": 20 + i % 9,
        "latency_ms": float(10 + i % 100),
        "tool_calls": ["search"] if i % 3 == 0 else [],
    }
    return llm_trace({**varied, **(shape or {})}, **fields)


def metric_sample(shape: Mapping[str, Any] | None = None, /, **fields: Any) -> MetricSample:
    """A tool.invocation_duration_ms observation of tool "search" unless ``shape`` or
    ``fields`` say otherwise."""
    defaults: dict[str, Any] = {
        "key": MetricKey.TOOL_INVOCATION_DURATION_MS,
        "labels": {"tool": "search"},
        "value": 1.0,
    }
    return MetricSample(**{**defaults, **(shape or {}), **fields})


def numbered_sample(i: int, **fields: Any) -> MetricSample:
    return metric_sample(**{"value": float(i), **fields})


def trace_entry(traces: Sequence[LLMTrace], batch_id: str | None = None) -> dict[bytes, bytes]:
    """The fields of one trace entry as the emitter writes it."""
    return encode_batch(Kind.TRACE, traces, batch_id or new_batch_id())


def sample_entry(
    samples: Sequence[MetricSample], batch_id: str | None = None
) -> dict[bytes, bytes]:
    return encode_batch(Kind.METRIC, samples, batch_id or new_batch_id())


def add_traces(client: redis.Redis, keys: Keys, traces: Sequence[LLMTrace]) -> str:
    """XADD one entry holding ``traces``; its entry id."""
    entry_id = client.xadd(keys.traces, trace_entry(traces))  # type: ignore[arg-type]
    return str(entry_id.decode())


def add_samples(client: redis.Redis, keys: Keys, samples: Sequence[MetricSample]) -> str:
    entry_id = client.xadd(keys.metrics, sample_entry(samples))  # type: ignore[arg-type]
    return str(entry_id.decode())


def _trace(i: int, plan: str = "", cost: float | None = None) -> LLMTrace:
    priced = {} if cost is None else {"cost_usd": cost}
    return llm_trace(
        plan_id=plan or f"plan-{i % 3}",
        actor="a",
        provider="openai",
        model="gpt-4o",
        prompt_tokens=i + 1,
        **priced,  # type: ignore[arg-type]
    )


#: The calls the storage commands' tests store (started now unless a test says when).
STORED_CALL = {
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "cost_usd": 0.5,
    "latency_ms": 100.0,
}


#: The calls the forwarding tests forward; each names its plan (or None).
RUN_CALL = {"prompt_tokens": 10, "completion_tokens": 5, "latency_ms": 20.0}
