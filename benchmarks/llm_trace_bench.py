"""ASV benchmarks of the write path of an ``LLMTrace``, one stage at a time.

Every benchmark handles one batch of ``BATCH_RECORDS`` records, so a stage's
throughput is ``BATCH_RECORDS / time`` records per second; the stages are the ones a
record passes through on its way from agent code to a row:

    validation  LLMTrace(...)                 model.py
    encoding    encode_batch                  codec.py
    decoding    decode_entry (with validation) codec.py, as the worker calls it

Benchmarks that need Redis or PostgreSQL make a fresh namespace or database in
``setup`` and remove it in ``teardown``, so they can run next to the test suites.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fleettrace.codec import Kind, decode_entry, encode_batch, new_batch_id
from fleettrace.model import LLMTrace

BATCH_RECORDS = 1000


def trace_fields(index: int) -> dict[str, Any]:
    """The keyword arguments of one realistic LLM call, varied by ``index``."""
    return {
        "trace_id": uuid.uuid4(),
        "plan_id": f"plan-{index // 50}",
        "decision_id": f"decision-{index // 5}",
        "actor": ("planner", "coder", "reviewer")[index % 3],
        "provider": "openai",
        "model": ("gpt-4o", "gpt-4o-mini")[index % 2],
        "prompt_tokens": 800 + index % 400,
        "completion_tokens": 120 + index % 80,
        "latency_ms": 350.0 + index % 900,
        "tool_calls": ["search", "read_file"][: index % 3],
        "context_hash": f"{index:064x}",
        "streaming": index % 4 == 0,
        "retry_count": index % 7,
        "error": "RateLimitError: slow down" if index % 50 == 0 else None,
        "started_at": datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
    }


def trace_batch(count: int = BATCH_RECORDS) -> list[LLMTrace]:
    return [LLMTrace(**trace_fields(i)) for i in range(count)]


class TraceValidation:
    """Building and validating records, as ``record()`` does for every call.

    With ``cost_usd`` given the model only validates; without it the call is also
    priced, which is a genai-prices lookup the first time a (provider, model, tokens)
    shape is seen and a cache hit afterwards.
    """

    def setup(self) -> None:
        self.fields = [trace_fields(i) for i in range(BATCH_RECORDS)]
        self.priced_fields = [{**fields, "cost_usd": 0.01} for fields in self.fields]

    def time_validate_batch(self) -> None:
        for fields in self.priced_fields:
            LLMTrace(**fields)

    def time_validate_and_price_batch(self) -> None:
        for fields in self.fields:
            LLMTrace(**fields)


class TraceEncoding:
    """Turning a batch of records into one stream entry."""

    def setup(self) -> None:
        self.records = trace_batch()
        self.batch_id = new_batch_id()

    def time_encode_batch(self) -> None:
        encode_batch(Kind.TRACE, self.records, self.batch_id)


class WorkerDecoding:
    """Checking an entry's envelope and validating each of its records in the worker."""

    def setup(self) -> None:
        self.fields = encode_batch(Kind.TRACE, trace_batch(), new_batch_id())

    def time_decode_and_validate_batch(self) -> None:
        decode_entry(self.fields)
