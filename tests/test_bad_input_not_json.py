"""The reasons of records that are not JSON name the field where the JSON broke, or
the record when no field can be named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleettrace.codec import (
    FORMAT_VERSION,
    Kind,
    decode_entry,
    describe_validation_error,
    encode_lines,
    new_batch_id,
)
from fleettrace.model import LLMTrace
from tests.factories import good_line

pytestmark = pytest.mark.slow


# -- the reasons of records that are not JSON name the field too -----------------------


def test_a_record_that_is_not_json_names_the_field_where_it_broke() -> None:
    line = good_line({"provider": "openai", "model": "gpt-4o"})
    broken = line.replace(b'"model":"gpt-4o"', b'"model":"gpt\xff"')
    (error,) = decode_entry(encode_lines(Kind.TRACE, [broken], new_batch_id())).errors
    assert error.reason.startswith("model: Invalid JSON")
    truncated = line[:20]
    (error,) = decode_entry(encode_lines(Kind.TRACE, [truncated], new_batch_id())).errors
    assert error.reason.startswith("trace_id: Invalid JSON")


def test_a_json_error_before_any_field_is_the_record() -> None:
    for line in (b"{", b"\xff", b"[1]", b" "):
        (error,) = decode_entry(encode_lines(Kind.TRACE, [line], new_batch_id())).errors
        assert error.reason.startswith("record: "), error.reason


def test_a_json_error_without_a_position_is_the_record() -> None:
    try:
        LLMTrace.model_validate_json(b"{")
    except ValidationError as error:
        assert describe_validation_error(error).startswith("record: Invalid JSON")
        assert describe_validation_error(error, b"{").startswith("record: Invalid JSON")
    from fleettrace.codec import _field_at_json_error

    assert _field_at_json_error(b'{"a": 1', "no column here") is None
    assert _field_at_json_error(b'{"a": 1', "EOF at line 1 column 7") == "a"
    assert _field_at_json_error(b'{"a\\": 1', "EOF at line 1 column 8") is None
    assert FORMAT_VERSION == b"3"
