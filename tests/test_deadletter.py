"""Dead letters keep what arrived byte for byte, and replay brings them home once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import redis

from fleettrace.codec import Kind, decode_entry, encode_record
from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace_worker.keys import DEAD_ORIGINAL_PREFIX, PERSIST_GROUP
from fleettrace_worker.stream.deadletter import (
    DeadLetter,
    DeadLetterLog,
    delete_dead_letters,
    entry_id_at,
    iter_dead_letters,
    list_dead_letters,
    purge_dead_letters,
    replay_batch_id,
    replay_dead_letters,
    replay_fields,
)
from tests.factories import numbered_sample, numbered_trace, trace_entry
from tests.worker_helpers import ROOT

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


def _letter(keys, reason: str) -> DeadLetter:
    return DeadLetter(reason, keys.traces, "1-0", "c1", BATCH, "t", 0, b"{}")


def test_dead_letters_are_read_in_pages_every_one_once_in_order(private_redis) -> None:
    client = redis.Redis.from_url(private_redis.url)
    keys = Keys("paged")
    dlq = keys.dead_letters(PERSIST_GROUP)
    pipe = client.pipeline(transaction=False)
    for i in range(1_205):
        pipe.xadd(dlq, _letter(keys, f"reason {i % 3}").to_fields())
    ids = [entry_id.decode() for entry_id in pipe.execute()]
    client.config_resetstat()  # a private server: its statistics are ours to reset
    seen = [dead_id for dead_id, _ in iter_dead_letters(client, keys, PERSIST_GROUP, page_size=100)]
    assert seen == ids
    # 12 full pages and one of 5: never the whole stream in one reply.
    assert client.info("commandstats")["cmdstat_xrange"]["calls"] == 13
    matching = list_dead_letters(client, keys, PERSIST_GROUP, reason="reason 2")
    assert [d for d, _ in matching] == ids[2::3]
    assert len(list_dead_letters(client, keys, PERSIST_GROUP, count=7, reason="reason 1")) == 7
    client.close()


def test_delete_by_id_says_which_were_missing(redis_client, keys) -> None:
    first = _put(redis_client, keys, _letter(keys, "a"))
    second = _put(redis_client, keys, _letter(keys, "b"))
    report = delete_dead_letters(redis_client, keys, PERSIST_GROUP, [first, "1-1"])
    assert (report.deleted, report.missing) == ([first], ["1-1"])
    assert [d for d, _ in list_dead_letters(redis_client, keys, PERSIST_GROUP)] == [second]
    with pytest.raises(ConfigurationError, match="not a stream entry id: 'x'"):
        delete_dead_letters(redis_client, keys, PERSIST_GROUP, ["x"])


def test_purge_removes_what_is_older_and_only_the_matching_reason(redis_client, keys) -> None:
    dlq = keys.dead_letters(PERSIST_GROUP)
    now = datetime.now(UTC)
    old = int((now - timedelta(days=10)).timestamp() * 1000)
    made = {}
    for n, reason in enumerate(["timeout A", "bad field", "timeout B"]):
        made[reason] = redis_client.xadd(
            dlq, _letter(keys, reason).to_fields(), id=f"{old}-{n}"
        ).decode()
    fresh = _put(redis_client, keys, _letter(keys, "timeout C"))
    before = now - timedelta(days=7)
    assert (
        purge_dead_letters(redis_client, keys, PERSIST_GROUP, before=before, reason="timeout") == 2
    )
    left = [d for d, _ in list_dead_letters(redis_client, keys, PERSIST_GROUP)]
    assert left == [made["bad field"], fresh]
    assert purge_dead_letters(redis_client, keys, PERSIST_GROUP, before=before) == 1
    assert [d for d, _ in list_dead_letters(redis_client, keys, PERSIST_GROUP)] == [fresh]
    assert entry_id_at(datetime(1970, 1, 1, tzinfo=UTC)) == "0-0"


def test_replay_with_a_reason_brings_home_only_the_matching(redis_client, keys) -> None:
    good = encode_record(numbered_trace(1))
    keep = _put(redis_client, keys, _record_letter(keys, good))
    back = _put(
        redis_client,
        keys,
        DeadLetter("constraint no_poison", keys.traces, "1-0", "c1", BATCH, "t", 5, good),
    )
    report = replay_dead_letters(redis_client, keys, PERSIST_GROUP, reason="no_poison")
    assert report.replayed == [back]
    assert [d for d, _ in list_dead_letters(redis_client, keys, PERSIST_GROUP)] == [keep]
    assert redis_client.xlen(keys.traces) == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_dead_lettering_is_logged_with_group_count_and_reasons_at_most_once_per_interval(
    keys, caplog
) -> None:
    clock = _Clock()
    logger = logging.getLogger("test.deadletters")
    report = DeadLetterLog(interval_s=10.0, clock=clock, logger=logger)
    with caplog.at_level(logging.WARNING, logger="test.deadletters"):
        report.note("persist", [_letter(keys, "prompt_tokens: too big")] * 3)
        assert len(caplog.records) == 1
        report.note("persist", [_letter(keys, "model: missing")])
        report.note("persist", [_letter(keys, "model: missing")] * 2)
        report.note("langsmith", [_letter(keys, "LangSmith answered 422")])
        assert len(caplog.records) == 2  # persist held back; langsmith has its own
        clock.now += 10.0
        report.note("persist", [_letter(keys, "x" * 500)])
        report.note("persist", [])
        report.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert all(r.levelname == "WARNING" for r in caplog.records)
    assert lines[0].startswith("group persist dead-lettered 3 record(s) or entries: ")
    assert "3 x 'prompt_tokens: too big'" in lines[0]
    assert lines[1].startswith("group langsmith dead-lettered 1 ")
    assert lines[2].startswith("group persist dead-lettered 4 ")
    assert "3 x 'model: missing'" in lines[2] and "1 x 'xxx" in lines[2]
    assert "x" * 161 not in lines[2]
    assert len(lines) == 3  # nothing was left to flush
    assert "fleettrace dlq list --group persist" in lines[0]


def _dlq(*args: str, env: dict[str, str], answer: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleettrace_worker.cli", "dlq", *args],
        env=env,
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_the_dlq_command_deletes_and_purges_only_when_confirmed(
    redis_url, redis_client, keys
) -> None:
    env = {**os.environ, "FLEETTRACE_REDIS_URL": redis_url, "FLEETTRACE_NAMESPACE": keys.namespace}
    dlq = keys.dead_letters(PERSIST_GROUP)
    old = int((datetime.now(UTC) - timedelta(days=40)).timestamp() * 1000)
    ancient = redis_client.xadd(dlq, _letter(keys, "timeout").to_fields(), id=f"{old}-0").decode()
    first = _put(redis_client, keys, _letter(keys, "bad field model"))
    second = _put(redis_client, keys, _letter(keys, "bad field actor"))

    listed = _dlq("list", "--reason", "bad field", env=env)
    assert listed.returncode == 0
    assert first in listed.stdout and second in listed.stdout and ancient not in listed.stdout
    assert listed.stdout.splitlines()[-1] == (
        "showing 2 dead letters with a reason containing 'bad field'; 3 in group persist "
        f"of namespace {keys.namespace!r}"
    )
    assert _dlq("list", "--limit", "0", env=env).returncode == 2

    refused = _dlq("delete", "--id", first, env=env, answer="n\n")
    assert refused.returncode == 1
    assert "nothing deleted" in refused.stdout
    assert "[y/N]" in refused.stderr
    silent = _dlq("delete", "--id", first, env=env)  # stdin closed: no
    assert silent.returncode == 1
    assert redis_client.xlen(dlq) == 3

    typed = _dlq("delete", "--id", first, "1-1", env=env, answer="y\n")
    assert typed.returncode == 1  # 1-1 was not there
    assert "deleted 1 dead letter; not found 1" in typed.stdout
    purged = _dlq("purge", "--older-than", "30d", "--yes", env=env)
    assert purged.returncode == 0, purged.stderr
    assert "purged 1 dead letter of group persist" in purged.stdout
    assert [d for d, _ in list_dead_letters(redis_client, keys, PERSIST_GROUP)] == [second]
    typo = _dlq("delete", "--id", "17000", env=env)
    assert typo.returncode == 2
    assert "not a stream entry id: '17000'" in typo.stderr and "[y/N]" not in typo.stderr
    bad = _dlq("purge", "--older-than", "soon", "--yes", env=env)
    assert bad.returncode == 2
    assert "'soon' is not a duration" in bad.stderr
