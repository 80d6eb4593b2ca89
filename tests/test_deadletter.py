"""Dead letters keep what arrived byte for byte, and replay brings them home once."""

from __future__ import annotations

import pytest

from fleettrace.codec import Kind, decode_entry, encode_record
from fleettrace.errors import ConfigurationError
from fleettrace.keys import DEAD_ORIGINAL_PREFIX, PERSIST_GROUP
from fleettrace_worker.deadletter import (
    DeadLetter,
    list_dead_letters,
    replay_batch_id,
    replay_dead_letters,
    replay_fields,
)
from tests.factories import numbered_sample, numbered_trace, trace_entry

BATCH = "0123456789abcdef0123456789abcdef"


def _record_letter(keys, record: bytes, *, kind: str = "t", position: int = 3) -> DeadLetter:
    return DeadLetter(
        "was refused",
        keys.traces if kind == "t" else keys.metrics,
        "1-0",
        "c1",
        BATCH,
        kind,
        position,
        record,
    )


def _put(client, keys, letter: DeadLetter) -> str:
    return client.xadd(keys.dead_letters(PERSIST_GROUP), letter.to_fields()).decode()


def test_fields_round_trip_binary_safe(keys) -> None:
    record = DeadLetter.for_record(
        keys.traces,
        "1-0",
        "c1",
        batch_id=BATCH,
        kind=Kind.TRACE,
        position=2,
        record=encode_record(numbered_trace(1)) + b"\xff",
        reason="bad \udcff byte",
    )
    back = DeadLetter.from_fields(record.to_fields())
    assert back.record == record.record
    assert (back.batch_id, back.kind, back.position) == (BATCH, "t", 2)
    assert back.reason == "bad \\udcff byte"
    whole = DeadLetter.for_entry(keys.traces, "2-0", {b"v": b"\x00\xfe", b"\xff": b""}, "c2", "x")
    fields = whole.to_fields()
    assert fields[DEAD_ORIGINAL_PREFIX + b"\xff"] == b""
    back = DeadLetter.from_fields(fields)
    assert back.original == {b"v": b"\x00\xfe", b"\xff": b""}
    assert back.record is None and back.position is None
    assert "original" not in repr(whole)


def test_list_shows_dead_letters_oldest_first(redis_client, keys) -> None:
    assert list_dead_letters(redis_client, keys, PERSIST_GROUP) == []
    first = _put(redis_client, keys, _record_letter(keys, b"{}"))
    second = _put(redis_client, keys, _record_letter(keys, b"[]", position=4))
    listed = list_dead_letters(redis_client, keys, PERSIST_GROUP)
    assert [(i, d.position) for i, d in listed] == [(first, 3), (second, 4)]
    assert len(list_dead_letters(redis_client, keys, PERSIST_GROUP, count=1)) == 1


def test_replay_batch_id_is_deterministic_and_valid() -> None:
    assert replay_batch_id(BATCH, 1) == replay_batch_id(BATCH, 1)
    assert replay_batch_id(BATCH, 1) != replay_batch_id(BATCH, 2)
    assert len(replay_batch_id(BATCH, 1)) == 32


def test_a_record_goes_home_in_a_batch_of_its_own(redis_client, keys) -> None:
    record = encode_record(numbered_sample(5))
    dead_id = _put(redis_client, keys, _record_letter(keys, record, kind="m"))
    report = replay_dead_letters(redis_client, keys, PERSIST_GROUP)
    assert report.replayed == [dead_id]
    [(_, fields)] = redis_client.xrange(keys.metrics)
    batch = decode_entry(fields)
    assert batch.batch_id == replay_batch_id(BATCH, 3)
    assert [r.value for r in batch.records] == [5.0]  # type: ignore[union-attr]
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0


def test_a_whole_entry_goes_home_as_it_was(redis_client, keys) -> None:
    fields = trace_entry([numbered_trace(1), numbered_trace(2)], BATCH)
    letter = DeadLetter.for_entry(keys.traces, "1-0", fields, "c1", "delivered 6 times")
    dead_id = _put(redis_client, keys, letter)
    report = replay_dead_letters(redis_client, keys, PERSIST_GROUP, [dead_id])
    assert report.replayed == [dead_id]
    [(_, back)] = redis_client.xrange(keys.traces)
    assert back == fields


def test_replay_keeps_what_the_code_would_still_refuse(redis_client, keys) -> None:
    cases = {
        "record still fails": _record_letter(keys, b'{"provider": 1}'),
        "not a stream of this namespace": DeadLetter("r", "{other}:traces", "1-0", "c1"),
        "lacks its batch id": DeadLetter("r", keys.traces, "1-0", "c1", record=b"{}"),
        "unknown record kind": _record_letter(keys, encode_record(numbered_trace(1)), kind="z"),
        "neither a record nor an entry": DeadLetter("r", keys.traces, "1-0", "c1"),
        "entry still fails": DeadLetter.for_entry(keys.traces, "1-0", {b"v": b"9"}, "c1", "r"),
    }
    ids = {_put(redis_client, keys, letter): reason for reason, letter in cases.items()}
    report = replay_dead_letters(redis_client, keys, PERSIST_GROUP, [*ids, "1-1"])
    assert report.replayed == []
    assert report.missing == ["1-1"]
    assert len(report.refused) == len(cases)
    for dead_id, reason in report.refused:
        assert ids[dead_id] in reason
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == len(cases)
    with pytest.raises(ValueError, match="neither"):
        replay_fields(keys, cases["neither a record nor an entry"])


def test_replay_refuses_ids_that_are_not_entry_ids(redis_client, keys) -> None:
    with pytest.raises(ConfigurationError, match="not a stream entry id: 'abc'"):
        replay_dead_letters(redis_client, keys, PERSIST_GROUP, ["abc"])
