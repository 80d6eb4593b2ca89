"""Rolling upgrades of the stream format, against the machine's Redis and PostgreSQL.

An entry of every version this worker reads (frozen, byte for byte, in
``tests/fixtures/wire/v<N>-*.json``: an older producer's output) is stored; an entry
of a newer version than it reads (a newer producer's output) is left pending, never
dead-lettered, however often it is delivered, and the worker says "upgrade needed"
in its log (once), its health and ``/readyz``."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from fleettrace.codec import (
    CURRENT_VERSION,
    READABLE_VERSIONS,
    decode_entry,
    encode_batch,
    newer_version,
)
from fleettrace.model import TOKEN_DETAIL_FIELDS
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.loop import LoopSettings
from tests.factories import add_traces, numbered_trace
from tests.waiting import wait_until
from tests.worker_helpers import (
    http_get,
    migrated,
    pending,
    sample_rows,
    scalar,
    serving_worker,
    trace_rows,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "wire"


def _fixture(version: int, kind: str) -> dict[bytes, bytes]:
    doc = json.loads((FIXTURES / f"v{version}-{kind}.json").read_text())
    return {name.encode(): value.encode() for name, value in doc.items()}


def _newer_entry() -> dict[bytes, bytes]:
    """What a producer one version ahead might write: this version's envelope with a
    field this code has never heard of."""
    fields = _fixture(CURRENT_VERSION, "traces")
    fields[b"v"] = str(CURRENT_VERSION + 1).encode()
    fields[b"x"] = b"a field of the next version"
    return fields


def test_this_version_and_the_one_before_are_readable_and_frozen() -> None:
    assert CURRENT_VERSION in READABLE_VERSIONS
    if CURRENT_VERSION > 1:  # the previous version stays readable for one release
        assert CURRENT_VERSION - 1 in READABLE_VERSIONS
    for version in READABLE_VERSIONS:
        for kind in ("traces", "metrics"):
            batch = decode_entry(_fixture(version, kind))
            assert batch.errors == []
            assert batch.records
            assert newer_version(_fixture(version, kind)) is None
    assert newer_version(_newer_entry()) == CURRENT_VERSION + 1
    assert newer_version({b"v": b"0"}) is None  # older than readable: bad input
    assert newer_version({b"v": b"9" * 7}) is None  # not a version: bad input


def test_entries_of_every_readable_version_are_stored(redis_client, keys, database_url) -> None:
    db = migrated(database_url)
    for version in sorted(READABLE_VERSIONS):
        redis_client.xadd(keys.traces, _fixture(version, "traces"))  # type: ignore[arg-type]
        redis_client.xadd(keys.metrics, _fixture(version, "metrics"))  # type: ignore[arg-type]
    with create_pool(db, min_size=1, max_size=1) as pool:
        consumer = Consumer(redis_client, keys, PERSIST_GROUP, "w1")
        loop = PersistLoop(consumer, LLMTraceRepository(pool), LoopSettings(burst=True), pool=pool)
        loop.run(threading.Event())
    assert trace_rows(db) == 3  # the same records in every version: stored once
    assert sample_rows(db) == 1
    assert scalar(db, "SELECT sum(prompt_tokens) FROM llm_traces") == 100 + 101 + 102
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0
    assert pending(redis_client, keys) == 0
    assert loop.stats.upgrade_needed is None


def test_an_entry_of_a_newer_version_stays_pending_and_asks_for_an_upgrade(
    redis_client, keys, database_url, caplog
) -> None:
    db = migrated(database_url)
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(5)])
    newer = [redis_client.xadd(keys.traces, _newer_entry()) for _ in range(2)]  # type: ignore[arg-type]
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(5, 9)])
    caplog.set_level(logging.WARNING, logger="fleettrace_worker.stream.loop")
    with create_pool(db, min_size=1, max_size=1) as pool:
        # Run again and again under one name: each run delivers the entries once more
        # (recovering its own pending ones), well past max_deliveries.
        for _ in range(4):
            consumer = Consumer(redis_client, keys, PERSIST_GROUP, "w1")
            settings = LoopSettings(burst=True, max_deliveries=1, batch_records=4)
            loop = PersistLoop(consumer, LLMTraceRepository(pool), settings, pool=pool)
            loop.run(threading.Event())
            expected = (
                f"upgrade needed: entries of stream format version {CURRENT_VERSION + 1} found"
            )
            assert (loop.stats.upgrade_needed or "").startswith(expected)
            assert loop.stats.not_ready_reason() == loop.stats.upgrade_needed
            assert loop.stats.snapshot()["upgrade_needed"] == loop.stats.upgrade_needed
    assert trace_rows(db) == 9
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0
    assert pending(redis_client, keys) == 2
    details = redis_client.xpending_range(keys.traces, PERSIST_GROUP, "-", "+", 10)
    assert [d["message_id"] for d in details] == newer
    assert all(d["times_delivered"] >= 4 for d in details)
    warnings = [r for r in caplog.records if "upgrade needed" in r.getMessage()]
    assert len(warnings) == 4  # once per run (per process), not once per entry


def test_the_worker_reports_upgrade_needed_in_health_readyz_and_metrics(
    redis_url, redis_client, keys, database_url
) -> None:
    db = migrated(database_url)
    add_traces(redis_client, keys, [numbered_trace(1)])
    with serving_worker(redis_url, db, keys, consumer="u1") as (worker, base):
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "ready")
        redis_client.xadd(keys.traces, _newer_entry())  # type: ignore[arg-type]
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 503, 60, "not ready")
        body = http_get(f"{base}/readyz")[1]
        assert body.startswith("not ready: upgrade needed: entries of stream format version")
        metrics = http_get(f"{base}/metrics")[1]
        assert 'fleettrace_worker_upgrade_needed{group="persist"} 1.0' in metrics
        assert 'fleettrace_worker_seconds_since_progress{group="persist"}' in metrics
        [group] = worker.health()["groups"]  # type: ignore[misc]
        assert str(group["upgrade_needed"]).startswith("upgrade needed")
        assert group["stalled"] is False
    assert trace_rows(db) == 1
    assert pending(redis_client, keys) == 1
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0


@pytest.mark.parametrize("kind", ["traces", "metrics"])
def test_fixtures_are_what_this_version_writes(kind: str) -> None:
    """The frozen entries of the current version are exactly what the encoder writes
    today, so they stay valid "older producer" input once the format moves on."""
    fields = _fixture(CURRENT_VERSION, kind)
    batch = decode_entry(fields)
    again = encode_batch(batch.kind, batch.records, batch.batch_id)
    assert again == fields


def test_version_two_carries_token_details_and_version_one_reads_them_as_unreported(
    redis_client, keys, database_url
) -> None:
    v1 = decode_entry(_fixture(1, "traces"))
    assert all(getattr(r, name) is None for r in v1.records for name in TOKEN_DETAIL_FIELDS)
    db = migrated(database_url)
    redis_client.xadd(keys.traces, _fixture(2, "traces"))  # type: ignore[arg-type]
    with create_pool(db, min_size=1, max_size=1) as pool:
        consumer = Consumer(redis_client, keys, PERSIST_GROUP, "w1")
        loop = PersistLoop(consumer, LLMTraceRepository(pool), LoopSettings(burst=True), pool=pool)
        loop.run(threading.Event())
    assert trace_rows(db) == 3
    assert scalar(db, "SELECT sum(cache_read_tokens) FROM llm_traces") == 50
    assert scalar(db, "SELECT sum(cache_write_tokens) FROM llm_traces") == 10
    assert scalar(db, "SELECT sum(reasoning_tokens) FROM llm_traces") == 5
    assert scalar(db, "SELECT count(*) FROM llm_traces WHERE audio_input_tokens IS NULL") == 3


def test_a_record_may_leave_out_only_the_token_details() -> None:
    fields = _fixture(2, "traces")
    lines = fields[b"d"].split(b"\n")
    record = json.loads(lines[0])
    for name in TOKEN_DETAIL_FIELDS:
        del record[name]
    without_details = json.dumps(record).encode()
    del record["prompt_tokens"]
    without_tokens = json.dumps(record).encode()
    fields[b"d"] = b"\n".join([without_details, without_tokens, lines[2]])
    batch = decode_entry(fields)
    assert [e.reason for e in batch.errors] == ["prompt_tokens: Field missing from the record"]
    assert batch.positions == [0, 2]
    assert batch.records[0].cache_read_tokens is None  # type: ignore[union-attr]


def test_version_three_carries_attributes_and_older_versions_read_them_as_none() -> None:
    for version in (1, 2):
        for record in decode_entry(_fixture(version, "traces")).records:
            assert (record.tags, record.metadata, record.user_id) == ([], {}, None)  # type: ignore[union-attr]
            assert (record.session_id, record.ttft_ms) == (None, None)  # type: ignore[union-attr]
    first = decode_entry(_fixture(3, "traces")).records[0]
    assert first.tags == ["prod", "eu"]  # type: ignore[union-attr]
    assert first.metadata == {"team": "search", "tier": 2, "ratio": 0.5, "beta": True}  # type: ignore[union-attr]
    assert (first.user_id, first.session_id, first.ttft_ms) == ("user-1", "session-1", 4.25)  # type: ignore[union-attr]
