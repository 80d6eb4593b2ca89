"""What one stream entry can cost a worker: an entry whose data is larger than the
worker's limit is dead-lettered by its size before anything decodes it, so one
oversized entry (a bug or a hostile writer) cannot take a worker's memory."""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis

from fleettrace.codec import Kind, encode_batch, encode_record, new_batch_id
from fleettrace.errors import ConfigurationError
from fleettrace.keys import FIELD_BATCH_ID, FIELD_DATA, MAX_ENTRY_BYTES, Keys
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.forward.langsmith.group import ForwardLoop, loop_settings
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.keys import LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters
from fleettrace_worker.stream.loop import LoopSettings
from tests.factories import add_traces, numbered_trace
from tests.langsmith_server import LangSmithServer
from tests.waiting import wait_until
from tests.worker_helpers import migrated, pending, scalar, start_worker, trace_rows, worker_env

#: What a worker process may reach with a 20 MB entry in its stream. It starts at about
#: 76 MB here and reading the entry costs about twice its size (118 MB measured);
#: decoding it as well took the worker to 237 MB.
RSS_BOUND_MB = 150


def oversized_entry(target_bytes: int) -> dict[bytes, bytes]:
    """A well-formed batch of valid records whose data field is about ``target_bytes``:
    decoding it would build tens of thousands of models."""
    records = []
    size = 0
    while size <= target_bytes:
        records.append(numbered_trace(len(records)))
        size += len(encode_record(records[-1])) + 1
    return encode_batch(Kind.TRACE, records, new_batch_id())


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, flags=re.MULTILINE)
    assert match is not None, status
    return int(match.group(1)) / 1024


def _all_handled(client: redis.Redis, keys: Keys) -> bool:
    """The persist group has been given every entry of the stream and acknowledged it."""
    if not client.exists(keys.traces):
        return False
    for info in client.xinfo_groups(keys.traces):
        if info["name"].decode() == PERSIST_GROUP:
            return info["lag"] == 0 and info["pending"] == 0
    return False


@pytest.mark.slow
def test_a_20_mb_entry_is_dead_lettered_by_size_with_the_worker_rss_bounded(
    redis_url: str, redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    db = migrated(database_url)
    huge = oversized_entry(20 * 1024 * 1024)
    size = len(huge[FIELD_DATA])
    batch_id = huge[FIELD_BATCH_ID]
    assert size > 20 * 1024 * 1024
    before = add_traces(redis_client, keys, [numbered_trace(1, plan_id="before")])
    huge_id = redis_client.xadd(keys.traces, huge).decode()  # type: ignore[arg-type]
    after = add_traces(redis_client, keys, [numbered_trace(2, plan_id="after")])
    del huge
    env = worker_env(redis_url, db, keys)
    worker = start_worker("--consumer", "w-size", "--block-ms", "200", env=env)
    try:
        wait_until(lambda: _all_handled(redis_client, keys), 120, "every entry handled")
        peak_mb = _peak_rss_mb(worker.pid)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert peak_mb < RSS_BOUND_MB, f"worker peaked at {peak_mb:.0f} MB"
    assert trace_rows(db) == 2
    assert scalar(db, "SELECT count(*) FROM llm_traces WHERE plan_id IN ('before', 'after')") == 2
    [(_, letter)] = list_dead_letters(redis_client, keys, PERSIST_GROUP)
    assert letter.entry_id == huge_id
    assert letter.entry_id not in (before, after)
    assert str(size) in letter.reason
    assert str(MAX_ENTRY_BYTES) in letter.reason
    assert "too large" in letter.reason
    # The dead letter keeps the envelope, not the 20 MB: the dead-letter stream is not
    # trimmed, and a writer must not be able to grow it by whatever size it likes.
    assert letter.original is not None
    assert FIELD_DATA not in letter.original
    assert letter.original[FIELD_BATCH_ID] == batch_id


def test_the_limit_is_a_worker_setting_read_from_the_environment() -> None:
    assert WorkerSettings("redis://x", "postgresql://x").max_entry_bytes == MAX_ENTRY_BYTES
    settings = WorkerSettings.from_env(
        "redis://x", "postgresql://x", {"FLEETTRACE_WORKER_MAX_ENTRY_BYTES": "1048576"}
    )
    assert settings.max_entry_bytes == 1_048_576
    assert settings.loop_settings().max_entry_bytes == 1_048_576
    given = WorkerSettings.from_env(
        "redis://x",
        "postgresql://x",
        {"FLEETTRACE_WORKER_MAX_ENTRY_BYTES": "1048576"},
        max_entry_bytes=2048,
    )
    assert given.max_entry_bytes == 2048
    with pytest.raises(ConfigurationError, match="max_entry_bytes"):
        WorkerSettings("redis://x", "postgresql://x", max_entry_bytes=0)
    with pytest.raises(ConfigurationError, match="MAX_ENTRY_BYTES"):
        WorkerSettings.from_env(
            "redis://x", "postgresql://x", {"FLEETTRACE_WORKER_MAX_ENTRY_BYTES": "4 MiB"}
        )


def test_an_entry_at_the_limit_is_stored_one_byte_over_is_dead_lettered(
    redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    """The edge: the limit is the largest data field accepted. Every group checks it
    (the langsmith group reads the same entries)."""
    db = migrated(database_url)
    entry = encode_batch(Kind.TRACE, [numbered_trace(i) for i in range(5)], new_batch_id())
    limit = len(entry[FIELD_DATA])
    at_limit_id = redis_client.xadd(keys.traces, entry).decode()  # type: ignore[arg-type]
    over = encode_batch(Kind.TRACE, [numbered_trace(i) for i in range(5, 10)], new_batch_id())
    # One byte more than the limit: a longer plan id in one record.
    first = orjson.loads(over[FIELD_DATA].split(b"\n")[0])
    lines = over[FIELD_DATA].split(b"\n")
    while len(b"\n".join(lines)) <= limit:
        first["plan_id"] += "x"
        lines[0] = orjson.dumps(first)
    while len(b"\n".join(lines)) > limit + 1:
        first["plan_id"] = first["plan_id"][:-1]
        lines[0] = orjson.dumps(first)
    over[FIELD_DATA] = b"\n".join(lines)
    assert len(over[FIELD_DATA]) == limit + 1
    over_id = redis_client.xadd(keys.traces, over).decode()  # type: ignore[arg-type]

    pool = create_pool(db, min_size=1, max_size=1)
    try:
        settings = LoopSettings(burst=True, max_entry_bytes=limit, retry_initial_s=0.01)
        PersistLoop(
            Consumer(redis_client, keys, PERSIST_GROUP, "w1"),
            LLMTraceRepository(pool),
            settings,
            pool=pool,
        ).run(threading.Event())
    finally:
        pool.close()
    assert trace_rows(db) == 5
    [(_, letter)] = list_dead_letters(redis_client, keys, PERSIST_GROUP)
    assert letter.entry_id == over_id != at_limit_id
    assert letter.reason == (
        f"entry too large: field 'd' holds {limit + 1} bytes, "
        f"more than max_entry_bytes={limit}; not decoded, its data not kept"
    )
    assert pending(redis_client, keys) == 0

    stored = {orjson.loads(line)["trace_id"] for line in entry[FIELD_DATA].split(b"\n")}
    refused = {orjson.loads(line)["trace_id"] for line in over[FIELD_DATA].split(b"\n")}
    with LangSmithServer(api_key="k") as server:
        ls = LangSmithSettings(enabled=True, endpoint=server.url, api_key="k", concurrency=1)
        loop = replace(loop_settings(ls, burst=True), max_entry_bytes=limit)
        ForwardLoop(Consumer(redis_client, keys, LANGSMITH_GROUP, "w1"), ls, loop=loop).run(
            threading.Event()
        )
        assert stored <= server.run_ids()
        assert not refused & server.run_ids()
    [(_, forwarded)] = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert forwarded.entry_id == over_id
    assert forwarded.reason.startswith("entry too large")
    assert pending(redis_client, keys, LANGSMITH_GROUP) == 0
