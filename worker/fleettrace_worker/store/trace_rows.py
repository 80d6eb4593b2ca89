"""Trace records from their JSON lines straight to COPY rows: the persist group's
hot path.

Validating each line into an ``LLMTrace`` (pydantic) and then reading the model's
fields into a row took about 15 µs a record, most of the worker's time per row. Here
msgspec decodes a whole entry's lines at once into a struct that states the same
bounds as ``fleettrace.model`` (types, lengths, ranges, no unknown field, every field
present but those ``codec.MAY_BE_ABSENT`` names), and the struct's values become the
row as they are: about a third of the time.

The struct is the fast judge of the common case, never the last word on a refusal:
any line it refuses, or that holds what it does not check itself (an escaped NUL,
a token detail larger than its total), is validated again by ``codec.check_record``
on the pydantic model, which accepts it (its row is made from the model) or refuses
it with the reason a dead letter has always carried. So a record is refused for the
same reasons and in the same words as before, and the struct may only be stricter
than the model, never looser (``tests/test_trace_rows.py`` holds them side by side).
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from fleettrace.attributes import (
    MAX_METADATA_INT,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
)
from fleettrace.codec import MAY_BE_ABSENT, RECORD_SEPARATOR, Kind, RecordError, check_record
from fleettrace.model import (
    MAX_COST_USD,
    MAX_ERROR_CHARS,
    MAX_ID_CHARS,
    MAX_LATENCY_MS,
    MAX_NAME_CHARS,
    MAX_PLAN_DEPTH,
    MAX_RETRIES,
    MAX_TOKENS,
    MAX_TOOL_CALLS,
    LLMTrace,
)
from fleettrace_worker.store.tree_store import Source, text_array

TraceRow = tuple[object, ...]
"""The columns of one llm_traces row: ``repository.TRACE_COLUMNS``, then
``tree_store.SOURCE_COLUMNS``."""

_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
_Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
_Latency = Annotated[float, Meta(ge=0, le=MAX_LATENCY_MS)]
_Aware = Annotated[datetime, Meta(tz=True)]
# Finite: JSON has no inf or nan, but 1e999 reads as inf; a bound refuses it.
_Finite = Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
_Hash = Annotated[str, Meta(min_length=64, max_length=64, pattern="^[0-9a-f]+$")]
_Scalar = (
    bool
    | Annotated[int, Meta(ge=-MAX_METADATA_INT, le=MAX_METADATA_INT)]
    | _Finite
    | Annotated[str, Meta(max_length=MAX_METADATA_VALUE_CHARS)]
)
_Key = Annotated[str, Meta(min_length=1, max_length=MAX_METADATA_KEY_CHARS)]
_Tag = Annotated[str, Meta(min_length=1, max_length=MAX_TAG_CHARS)]


class _Trace(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An ``LLMTrace`` line as the encoder writes it; fields in the model's order."""

    trace_id: uuid.UUID
    plan_id: _Id | None
    decision_id: _Id | None
    actor: _Name | None
    provider: _Name
    model: _Name
    prompt_tokens: _Tokens | None
    completion_tokens: _Tokens | None
    cost_usd: Annotated[float, Meta(ge=0, le=MAX_COST_USD)] | None
    latency_ms: _Latency
    tool_calls: Annotated[list[_Name], Meta(max_length=MAX_TOOL_CALLS)]
    context_hash: _Hash | None
    streaming: bool
    retry_count: Annotated[int, Meta(ge=0, le=MAX_RETRIES)]
    error: Annotated[str, Meta(max_length=MAX_ERROR_CHARS)] | None
    started_at: _Aware
    cache_read_tokens: _Tokens | None = None
    cache_write_tokens: _Tokens | None = None
    reasoning_tokens: _Tokens | None = None
    audio_input_tokens: _Tokens | None = None
    audio_output_tokens: _Tokens | None = None
    tags: Annotated[list[_Tag], Meta(max_length=MAX_TAGS)] = []
    metadata: Annotated[dict[_Key, _Scalar], Meta(max_length=MAX_METADATA_KEYS)] = {}
    user_id: _Id | None = None
    session_id: _Id | None = None
    ttft_ms: _Latency | None = None
    root_plan_id: _Id | None = None
    root_started_at: _Aware | None = None
    plan_path: Annotated[list[_Id], Meta(max_length=MAX_PLAN_DEPTH)] = []


_FIELDS: Final = _Trace.__struct_fields__
_OPTIONAL: Final = _FIELDS[len(_FIELDS) - len(_Trace.__struct_defaults__) :]
if tuple(LLMTrace.model_fields) != _FIELDS or set(_OPTIONAL) != MAY_BE_ABSENT:
    raise RuntimeError("trace_rows._Trace no longer matches LLMTrace")  # pragma: no cover

_decoder: Final = msgspec.json.Decoder(_Trace)
_EMPTY_ARRAY: Final = text_array([])
#: An escaped NUL: PostgreSQL text cannot hold it, the model refuses it with its
#: field's name, so a line holding it goes to the model.
_NUL: Final = b"\\u0000"


def row(trace: _Trace | LLMTrace, source: Source | tuple[()]) -> TraceRow:
    """The COPY row of a trace (a struct, or a model for a line the struct left to
    it), then its source columns. Fields by name into one tuple: reading the struct
    into a tuple first and cutting that up cost twice as much. The id goes as its
    16 bytes (``repository.TRACE_COLUMNS``). The names are the
    model's (checked above), in ``repository.TRACE_COLUMNS`` order (checked there)."""
    tags, tool_calls = trace.tags, trace.tool_calls
    return (
        trace.trace_id.bytes,
        trace.plan_id,
        trace.decision_id,
        trace.actor,
        trace.provider,
        trace.model,
        trace.prompt_tokens,
        trace.completion_tokens,
        trace.cost_usd,
        trace.latency_ms,
        text_array(tool_calls) if tool_calls else _EMPTY_ARRAY,
        trace.context_hash,
        trace.streaming,
        trace.retry_count,
        trace.error,
        trace.started_at,
        trace.cache_read_tokens,
        trace.cache_write_tokens,
        trace.reasoning_tokens,
        trace.audio_input_tokens,
        trace.audio_output_tokens,
        # NULL rather than empty: such a row pays nothing in their partial indexes.
        text_array(tags) if tags else None,
        trace.metadata or None,
        trace.user_id,
        trace.session_id,
        trace.ttft_ms,
        trace.root_plan_id,
        trace.root_started_at,
        text_array(trace.plan_path),
        *source,
    )


def _details_fit(trace: _Trace) -> bool:
    """The model's own check (a token detail is a part of its total), left to the
    model to word when it fails."""
    prompt, completion = trace.prompt_tokens, trace.completion_tokens
    if prompt is not None and (
        (trace.cache_read_tokens or 0) + (trace.cache_write_tokens or 0) > prompt
        or (trace.audio_input_tokens or 0) > prompt
    ):
        return False
    return completion is None or (
        (trace.reasoning_tokens or 0) <= completion
        and (trace.audio_output_tokens or 0) <= completion
    )


def decode(data: bytes, source: Source) -> tuple[list[TraceRow], list[int], list[RecordError]]:
    """The rows of the good records of an entry (``data`` its ``d`` field, checked by
    ``codec.check_envelope``; ``source`` the producer and namespace of its stream),
    their positions, and the bad records. The lines are split only when one of them
    goes to the model."""
    parsed: list[_Trace | None] = []
    lines: list[bytes] = []
    count = data.count(RECORD_SEPARATOR) + 1 if data else 0
    if _NUL not in data:
        try:
            parsed = list(_decoder.decode_lines(data))
        except (msgspec.ValidationError, msgspec.DecodeError):
            parsed = []
    if len(parsed) != count:  # a bad line, an empty one decode_lines skips, a NUL
        lines = data.split(RECORD_SEPARATOR) if data else []
        parsed = [None if _NUL in line else _one(line) for line in lines]
    rows: list[TraceRow] = []
    positions: list[int] = []
    errors: list[RecordError] = []
    for index, trace in enumerate(parsed):
        if trace is not None and _details_fit(trace):
            rows.append(row(trace, source))
            positions.append(index)
            continue
        if not lines:
            lines = data.split(RECORD_SEPARATOR)
        checked = check_record(Kind.TRACE, index, lines[index])
        if isinstance(checked, RecordError):
            errors.append(checked)
        else:
            rows.append(row(checked, source))  # type: ignore[arg-type]
            positions.append(index)
    return rows, positions, errors


def _one(line: bytes) -> _Trace | None:
    try:
        return _decoder.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
