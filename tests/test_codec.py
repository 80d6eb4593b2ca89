"""Stream format v1: round trips, every envelope error, per-record errors."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from fleettrace import EntryDecodeError, LLMTrace, MetricKey, MetricSample
from fleettrace.codec import (
    FORMAT_VERSION,
    Kind,
    decode_entry,
    decode_record,
    encode_batch,
    encode_lines,
    encode_record,
    new_batch_id,
)
from fleettrace.keys import FIELD_BATCH_ID, FIELD_COUNT, FIELD_DATA, FIELD_KIND, FIELD_VERSION
from tests.factories import llm_trace

#: 300 calls (more than one encoding chunk) with every field set, a newline inside one
#: error; records are immutable, so the tests share them.
TRACES = tuple(
    llm_trace(
        prompt_tokens=i,
        completion_tokens=2 * i,
        plan_id=f"plan-{i % 3}",
        tool_calls=["search", "read"],
        context_hash="ab" * 32,
        error="Boom: newline\ninside" if i == 1 else None,
        streaming=bool(i % 2),
    )
    for i in range(300)
)


def test_trace_batch_round_trips_exactly_across_chunks() -> None:
    records = list(TRACES[:300])  # more than one encoding chunk
    batch_id = new_batch_id()
    entry = encode_batch(Kind.TRACE, records, batch_id)
    assert entry[FIELD_VERSION] == FORMAT_VERSION == b"3"
    assert entry[FIELD_KIND] == b"t"
    assert entry[FIELD_COUNT] == b"300"
    decoded = decode_entry(entry)
    assert decoded.kind is Kind.TRACE
    assert decoded.batch_id == batch_id
    assert decoded.records == records
    assert decoded.positions == list(range(300))
    assert decoded.errors == []


def test_metric_batch_round_trips() -> None:
    samples = [
        MetricSample(key=MetricKey.TOOL_INVOCATION_DURATION_MS, value=1.5, labels={"tool": "a"}),
        MetricSample(key=MetricKey.CONTEXT_TOKENS_USED, value=12, plan_id="p"),
    ]
    decoded = decode_entry(encode_batch(Kind.METRIC, samples, new_batch_id()))
    assert decoded.kind is Kind.METRIC
    assert decoded.records == samples


def test_empty_batch_round_trips() -> None:
    decoded = decode_entry(encode_batch(Kind.TRACE, [], new_batch_id()))
    assert decoded.records == []


def test_record_json_holds_every_field_with_utc_z() -> None:
    record = orjson.loads(encode_record(TRACES[0]))
    assert set(record) == set(LLMTrace.model_fields)
    assert record["started_at"].endswith("Z")


def entry(**overrides: bytes | None) -> dict[bytes, bytes]:
    fields = encode_batch(Kind.TRACE, list(TRACES[:2]), "a" * 32)
    for name, value in overrides.items():
        key = name.encode()
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    return fields


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (entry(v=b"4"), "unknown format version '4'; this code reads version 1, 2, 3"),
        (entry(v=None), "entry has no field 'v'"),
        (entry(k=None), "entry has no field 'k'"),
        (entry(b=None), "entry has no field 'b'"),
        (entry(n=None), "entry has no field 'n'"),
        (entry(d=None), "entry has no field 'd'"),
        (entry(x=b"1"), "entry has unknown fields: 'x'"),
        (entry(k=b"z"), "field 'k' must be 't' or 'm'"),
        (entry(k=b"\xff"), "field 'k' must be 't' or 'm'"),
        (entry(b=b"XYZ"), "field 'b' must be 32 lowercase hex digits"),
        (entry(n=b"-1"), "field 'n' must be a decimal count"),
        (entry(n=b"1234567890"), "field 'n' must be a decimal count"),
        (entry(n=b"3"), "field 'n' says 3 records but field 'd' holds 2"),
    ],
)
def test_every_envelope_error_says_what_is_wrong(fields: dict[bytes, bytes], message: str) -> None:
    with pytest.raises(EntryDecodeError) as caught:
        decode_entry(fields)
    assert message in str(caught.value)


def test_bad_records_are_reported_and_good_ones_kept_whole() -> None:
    good = list(TRACES[:3])
    lines = [encode_record(r) for r in good]
    bad_tokens = orjson.loads(lines[1])
    bad_tokens["prompt_tokens"] = -5
    missing = orjson.loads(lines[2])
    del missing["retry_count"]
    data = [lines[0], orjson.dumps(bad_tokens), b"{not json", orjson.dumps(missing)]
    decoded = decode_entry(encode_lines(Kind.TRACE, data, "b" * 32))
    assert decoded.records == [good[0]]
    assert decoded.positions == [0]
    assert [(e.index, e.raw) for e in decoded.errors] == [(1, data[1]), (2, data[2]), (3, data[3])]
    assert decoded.errors[0].reason.startswith("prompt_tokens: ")
    assert "Invalid JSON" in decoded.errors[1].reason
    assert decoded.errors[2].reason == "retry_count: Field missing from the record"


def test_a_trace_in_a_metric_entry_is_a_record_error() -> None:
    line = encode_record(TRACES[0])
    decoded = decode_entry(encode_lines(Kind.METRIC, [line], "c" * 32))
    assert decoded.records == []
    assert "key: Field required" in decoded.errors[0].reason


def test_fields_hold_only_bytes() -> None:
    fields = entry()
    assert set(fields) == {FIELD_VERSION, FIELD_KIND, FIELD_BATCH_ID, FIELD_COUNT, FIELD_DATA}
    assert all(isinstance(v, bytes) for v in fields.values())


def test_decode_record_validates_one_line() -> None:
    record = TRACES[0]
    assert decode_record(Kind.TRACE, encode_record(record)) == record
    with pytest.raises(ValidationError):
        decode_record(Kind.METRIC, encode_record(record))
