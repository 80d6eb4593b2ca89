"""The records fleettrace carries: ``LLMTrace`` and ``MetricSample``.

Both are frozen pydantic models in strict mode with unknown fields forbidden: the
same model validates a call made by agent code and an entry read back from the
stream by the worker, so a bad value is refused with the field's name at either end.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from fleettrace.attributes import (
    MAX_METADATA_INT,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
)
from fleettrace.metrics import MetricKey, MetricType

#: Bounds every producer and consumer agrees on; the docs' schema table quotes them.
MAX_ID_CHARS: Final = 128
MAX_NAME_CHARS: Final = 128
MAX_ERROR_CHARS: Final = 4096
MAX_TOOL_CALLS: Final = 256
MAX_TOKENS: Final = 1_000_000_000
MAX_RETRIES: Final = 10_000
MAX_COST_USD: Final = 1_000_000.0
MAX_LATENCY_MS: Final = 86_400_000.0
MAX_LABEL_CHARS: Final = 128
MAX_METRIC_VALUE: Final = 1e15
#: Deepest chain of plans a record names, root included (fleettrace.tree_records).
MAX_PLAN_DEPTH: Final = 32


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must be timezone-aware (UTC)")
    return value.astimezone(UTC)


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refusing it here keeps a row identical to its record.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Id = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_no_nul)
]
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_no_nul)
]
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
# pydantic's own finiteness check (in Rust) rather than a Python validator: validation
# is most of the worker's time per record. Strict floats still take whole numbers.
FiniteNonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


# Attributes (stream format version 3); their limits live in fleettrace.attributes.
Tag = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TAG_CHARS), AfterValidator(_no_nul)
]
MetadataKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS),
    AfterValidator(_no_nul),
]
MetadataScalar = (
    bool
    | Annotated[int, Field(ge=-MAX_METADATA_INT, le=MAX_METADATA_INT)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | Annotated[
        str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS), AfterValidator(_no_nul)
    ]
)


def _now() -> datetime:
    return datetime.now(UTC)


#: The token detail fields, each a part of ``prompt_tokens`` (input) or of
#: ``completion_tokens`` (output); ``None`` means the provider did not report it.
INPUT_DETAIL_FIELDS: Final = ("cache_read_tokens", "cache_write_tokens", "audio_input_tokens")
OUTPUT_DETAIL_FIELDS: Final = ("reasoning_tokens", "audio_output_tokens")
TOKEN_DETAIL_FIELDS: Final = (*INPUT_DETAIL_FIELDS, *OUTPUT_DETAIL_FIELDS)
#: The fields added with stream format version 3 (see fleettrace.attributes).
ATTRIBUTE_FIELDS: Final = ("tags", "metadata", "user_id", "session_id", "ttft_ms")
#: The fields that place a record in its plan tree (format version 3).
TREE_PLACE_FIELDS: Final = ("root_plan_id", "root_started_at", "plan_path")


class LLMTrace(BaseModel):
    """One LLM call of one agent.

    Tokens count as OpenAI and genai-prices count them: ``prompt_tokens`` is the whole
    input (cache reads and writes included) and ``completion_tokens`` the whole output
    (reasoning included); the detail fields say how much of each was of which kind,
    and ``None`` in any of them means "not reported". ``prompt_tokens=None`` or
    ``completion_tokens=None`` is a call whose provider returned no usage (a stream
    without usage, an error): its tokens are unknown, not zero, and it cannot be priced.

    ``cost_usd`` left out is priced by the emitter's sender thread, off the caller's
    thread (:mod:`fleettrace.pricing`), before the record is sent; the record the
    caller holds keeps ``cost_usd=None`` (``fleettrace.price_trace(trace)`` prices it
    now). A cost the caller set is kept. A model unknown to the price table stays
    ``None`` and ``cost_known`` is false, so an unpriced call is never taken for a free one.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, defer_build=True)

    trace_id: uuid.UUID = Field(default_factory=uuid.uuid4, strict=False)
    plan_id: Id | None = None
    decision_id: Id | None = None
    actor: Name | None = None
    provider: Name
    model: Name
    prompt_tokens: Tokens | None = 0
    completion_tokens: Tokens | None = 0
    cost_usd: Annotated[FiniteNonNegative, Field(le=MAX_COST_USD)] | None = None
    latency_ms: Annotated[FiniteNonNegative, Field(le=MAX_LATENCY_MS)] = 0.0
    tool_calls: Annotated[list[Name], Field(max_length=MAX_TOOL_CALLS)] = Field(
        default_factory=list
    )
    context_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    streaming: bool = False
    retry_count: Annotated[int, Field(ge=0, le=MAX_RETRIES)] = 0
    error: (
        Annotated[str, StringConstraints(max_length=MAX_ERROR_CHARS), AfterValidator(_no_nul)]
        | None
    ) = None
    started_at: UtcDatetime = Field(default_factory=_now)
    # Added with stream format version 2: kept after the seed's fields, so the column
    # order of llm_traces and every older reader stay as they were.
    cache_read_tokens: Tokens | None = None
    cache_write_tokens: Tokens | None = None
    reasoning_tokens: Tokens | None = None
    audio_input_tokens: Tokens | None = None
    audio_output_tokens: Tokens | None = None
    # Added with stream format version 3 (attributes): tags, metadata, who and which
    # session the call was for, and the time to its first streamed token.
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = Field(default_factory=list)
    metadata: Annotated[dict[MetadataKey, MetadataScalar], Field(max_length=MAX_METADATA_KEYS)] = (
        Field(default_factory=dict)
    )
    user_id: Id | None = None
    session_id: Id | None = None
    ttft_ms: Annotated[FiniteNonNegative, Field(le=MAX_LATENCY_MS)] | None = None
    # Added with stream format version 3 (the plan tree, see fleettrace.tree_records):
    # the root plan of the call's tree, its start, and the ancestors of the call's plan
    # (root first). Absent in older records: the call's place is then its plan alone.
    root_plan_id: Id | None = None
    root_started_at: UtcDatetime | None = None
    plan_path: Annotated[list[Id], Field(max_length=MAX_PLAN_DEPTH)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _details_within_totals(self) -> LLMTrace:
        """A detail is a part of its total, never more; checked when both are known."""
        prompt, completion = self.prompt_tokens, self.completion_tokens
        cache_read, cache_write = self.cache_read_tokens, self.cache_write_tokens
        if prompt is not None:
            if (cache_read or 0) + (cache_write or 0) > prompt:
                raise ValueError(
                    "cache_read_tokens + cache_write_tokens must not exceed prompt_tokens "
                    "(prompt_tokens is the whole input, cached part included)"
                )
            if (self.audio_input_tokens or 0) > prompt:
                raise ValueError("audio_input_tokens must not exceed prompt_tokens")
        if completion is not None:
            if (self.reasoning_tokens or 0) > completion:
                raise ValueError(
                    "reasoning_tokens must not exceed completion_tokens "
                    "(completion_tokens is the whole output, reasoning included)"
                )
            if (self.audio_output_tokens or 0) > completion:
                raise ValueError("audio_output_tokens must not exceed completion_tokens")
        return self

    @property
    def tokens_known(self) -> bool:
        """False when the provider reported no usage: the tokens are unknown, not zero."""
        return self.prompt_tokens is not None and self.completion_tokens is not None

    @property
    def total_tokens(self) -> int | None:
        """Input plus output tokens; ``None`` when either is unknown."""
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_known(self) -> bool:
        """False when the call could not be priced: its cost is unknown, not zero."""
        return self.cost_usd is not None

    @property
    def error_type(self) -> str | None:
        """The error's class: the text before the first ':' ("RateLimitError: slow down").

        Counted by ``llm.errors_count`` under the label ``error_type``.
        """
        if self.error is None:
            return None
        return self.error.split(":", 1)[0].strip()[:MAX_NAME_CHARS] or "error"


LabelValue = Annotated[str, StringConstraints(max_length=MAX_LABEL_CHARS), AfterValidator(_no_nul)]


class MetricSample(BaseModel):
    """One observation of one of the 17 metric keys, as stored in history."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, defer_build=True)

    key: MetricKey = Field(strict=False)
    labels: dict[str, LabelValue] = Field(default_factory=dict)
    value: Annotated[float, Field(ge=-MAX_METRIC_VALUE, le=MAX_METRIC_VALUE, allow_inf_nan=False)]
    plan_id: Id | None = None
    observed_at: UtcDatetime = Field(default_factory=_now)

    def model_post_init(self, context: Any, /) -> None:
        expected = set(self.key.spec.labels)
        if set(self.labels) != expected:
            raise ValueError(
                f"labels of {self.key.value} must be exactly {sorted(expected)}, "
                f"got {sorted(self.labels)}"
            )
        if self.key.spec.type is not MetricType.GAUGE and self.value < 0:
            raise ValueError(f"value of {self.key.value} must not be negative")

    @property
    def label_pairs(self) -> tuple[tuple[str, str], ...]:
        """Labels in the key's declared order, as the live counters are keyed."""
        return tuple((name, self.labels[name]) for name in self.key.spec.labels)
