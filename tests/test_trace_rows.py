"""The persist group's fast path (msgspec straight to COPY rows) judges every trace
line as the pydantic model does: the same lines refused, with the same reasons, and
the same rows for the lines accepted. Each case below changes one field of a good
record at the edge of what the model accepts; the fast path may hand a line to the
model, never accept one the model refuses."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from fleettrace.codec import Kind, RecordError, check_record, encode_record
from fleettrace.model import LLMTrace
from fleettrace_worker.store import trace_rows
from fleettrace_worker.store.trace_rows import row
from tests.factories import llm_trace

SOURCE = ("producer-a", "ns-a")

GOOD: dict[str, Any] = orjson.loads(
    encode_record(
        llm_trace(
            plan_id="plan-1",
            prompt_tokens=1200,
            completion_tokens=300,
            cache_read_tokens=1000,
            tool_calls=["search"],
            tags=["prod"],
            metadata={"team": "a", "n": 3, "ratio": 0.5, "on": True},
            plan_path=["root-plan"],
            root_plan_id="root-plan",
            context_hash="ab" * 32,
        )
    )
)

#: One changed field each (None: the field left out); every value at an edge.
CASES: dict[str, dict[str, Any]] = {
    "good": {},
    "offset timestamp": {"started_at": "2026-01-02T03:04:05.5+02:00"},
    "naive timestamp": {"started_at": "2026-01-02T03:04:05"},
    "timestamp not a date": {"started_at": "yesterday"},
    "uuid as 32 hex digits": {"trace_id": "0" * 31 + "1"},
    "uuid in braces": {"trace_id": "{12345678-1234-5678-1234-567812345678}"},
    "uuid not a uuid": {"trace_id": "nope"},
    "empty provider": {"provider": ""},
    "model at its limit": {"model": "m" * 128},
    "model over its limit": {"model": "m" * 129},
    "NUL in the error": {"error": "bad\x00byte"},
    "NUL in a tag": {"tags": ["a\x00"]},
    "tokens as a float": {"prompt_tokens": 1200.0},
    "tokens as a bool": {"completion_tokens": True},
    "tokens as a string": {"completion_tokens": "300"},
    "negative tokens": {"completion_tokens": -1},
    "tokens over the bound": {"completion_tokens": 1_000_000_001},
    "unknown tokens": {"prompt_tokens": None, "completion_tokens": None},
    "cache reads above the input": {"cache_read_tokens": 1201},
    "reasoning above the output": {"reasoning_tokens": 301},
    "cost 1e999": {"cost_usd": 1e999},
    "negative cost": {"cost_usd": -0.01},
    "latency as an int": {"latency_ms": 12},
    "latency over a day": {"latency_ms": 86_400_001.0},
    "streaming as 1": {"streaming": 1},
    "retry count over the bound": {"retry_count": 10_001},
    "hash with a newline": {"context_hash": "ab" * 32 + "\n"},
    "hash in capitals": {"context_hash": "AB" * 32},
    "too many tool calls": {"tool_calls": ["t"] * 257},
    "too many tags": {"tags": [f"t{i}" for i in range(33)]},
    "metadata nested": {"metadata": {"a": {"b": 1}}},
    "metadata int beyond 2**53": {"metadata": {"big": 2**60}},
    "metadata float": {"metadata": {"x": 1e300}},
    "metadata key empty": {"metadata": {"": 1}},
    "metadata value too long": {"metadata": {"k": "v" * 257}},
    "plan path too deep": {"plan_path": [f"p{i}" for i in range(33)]},
    "unknown field": {"surprise": 1},
    "required field missing": {"model": None},
    "token detail missing (version 1)": {"cache_read_tokens": None, "reasoning_tokens": None},
    "attributes missing (version 2)": {"tags": None, "metadata": None, "ttft_ms": None},
}


def _line(change: dict[str, Any]) -> bytes:
    record = dict(GOOD)
    for name, value in change.items():
        if value is None and name in GOOD and name not in ("prompt_tokens", "completion_tokens"):
            del record[name]
        else:
            record[name] = value
    return orjson.dumps(record)


def _by_the_model(index: int, line: bytes) -> TraceRowOrReason:
    checked = check_record(Kind.TRACE, index, line)
    if isinstance(checked, RecordError):
        return checked.reason
    assert isinstance(checked, LLMTrace)
    return row(checked, SOURCE)


TraceRowOrReason = tuple[object, ...] | str


def _by_the_fast_path(lines: list[bytes]) -> list[TraceRowOrReason]:
    rows, positions, errors = trace_rows.decode(b"\n".join(lines), SOURCE)
    found: dict[int, TraceRowOrReason] = dict(zip(positions, rows, strict=True))
    found.update((error.index, error.reason) for error in errors)
    assert sorted(found) == list(range(len(lines)))
    return [found[i] for i in range(len(lines))]


@pytest.mark.parametrize("case", CASES)
def test_fast_path_judges_a_line_as_the_model_does(case: str) -> None:
    line = _line(CASES[case])
    # Alone, and amid good lines (one bad line must not cost the others).
    lines = [_line({}), line, _line({"trace_id": "9" * 32})]
    assert _by_the_fast_path([line]) == [_by_the_model(0, line)]
    assert _by_the_fast_path(lines) == [_by_the_model(i, x) for i, x in enumerate(lines)]


def test_lines_that_are_not_records_are_refused_with_the_models_reason() -> None:
    lines = [_line({}), b"", b"not json", b"[1, 2]", b'{"trace_id": "\xff"}', _line({})]
    judged = _by_the_fast_path(lines)
    assert judged == [_by_the_model(i, x) for i, x in enumerate(lines)]
    assert [isinstance(j, str) for j in judged] == [False, True, True, True, True, False]


def test_a_row_holds_the_records_values_then_its_source() -> None:
    [made] = _by_the_fast_path([_line({})])
    assert isinstance(made, tuple)
    assert made[-2:] == SOURCE
    assert made[0] == uuid.UUID(GOOD["trace_id"]).bytes  # the uuid column, as its 16 bytes
    assert made[22] == GOOD["metadata"]  # metadata, as the jsonb column gets it


def test_a_key_given_twice_means_its_last_value_on_both_paths() -> None:
    line = _line({})[:-1] + b',"model":"other-model"}'
    judged = _by_the_fast_path([line])
    assert judged == [_by_the_model(0, line)]
    assert judged[0][5] == "other-model"  # type: ignore[index]
