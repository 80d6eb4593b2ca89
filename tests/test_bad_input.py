"""Malformed input of every kind, mixed with good records, into a running worker.

Hypothesis makes thousands of entries: envelopes with an unknown version, missing,
extra or malformed fields and invalid UTF-8; records with missing and extra fields,
wrong types, negative and huge numbers, NaN and infinity, megabyte strings and
invalid UTF-8; and good records full of SQL and shell metacharacters (the strategies
and breakers are in tests/factories.py). The ``persist`` loop runs the whole time.
Afterwards every bad entry or record is a dead letter whose reason names the field,
kept byte for byte, and every good record is a row that, serialised again, is byte for
byte the JSON line that was sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import orjson
import psycopg
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fleettrace.codec import Kind, encode_lines, new_batch_id
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters
from fleettrace_worker.stream.loop import LoopSettings
from tests.factories import ENVELOPE_BREAKERS, RECORD_BREAKERS, good_line, good_traces, megabytes
from tests.reliability import report
from tests.waiting import wait_until
from tests.worker_helpers import migrated

pytestmark = pytest.mark.slow


EXAMPLES = 150


@dataclass
class Sent:
    """What was sent and where each piece must end."""

    good: dict[str, bytes] = field(default_factory=dict)
    bad_records: dict[tuple[str, int], tuple[bytes, str]] = field(default_factory=dict)
    bad_entries: dict[str, str] = field(default_factory=dict)
    entries: int = 0
    megabyte_records: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, times: int = 1) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + times

    def merge(self, other: Sent) -> None:
        self.good.update(other.good)
        self.bad_records.update(other.bad_records)
        self.bad_entries.update(other.bad_entries)
        self.entries += other.entries
        self.megabyte_records += other.megabyte_records
        for kind, times in other.kinds.items():
            self.count(kind, times)


@st.composite
def entry_plans(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """One entry: a list of ("good", values) and ("bad", breaker index) records, and
    maybe an envelope breaker."""
    size = draw(st.integers(1, 4))
    records = [
        ("good", draw(good_traces))
        if draw(st.booleans())
        else ("bad", draw(st.integers(0, len(RECORD_BREAKERS) - 1)))
        for _ in range(size)
    ]
    envelope = draw(st.none() | st.integers(0, len(ENVELOPE_BREAKERS) - 1))
    return [("envelope", envelope), *records]


@pytest.fixture
def db(database_url: str) -> str:
    return migrated(database_url)


@pytest.fixture
def worker(redis_url: str, keys: Keys, db: str) -> Iterator[tuple[PersistLoop, threading.Thread]]:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    pool = create_pool(db, min_size=1, max_size=2)
    consumer = Consumer(client, keys, PERSIST_GROUP, "bad-input")
    loop = PersistLoop(
        consumer,
        LLMTraceRepository(pool),
        LoopSettings(block_ms=200, retry_initial_s=0.05, retry_max_s=0.5),
        pool=pool,
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    yield loop, thread
    stop.set()
    thread.join(30)
    pool.close()
    client.close()


# The worker runs on a thread beside the examples and draws jitter from the random
# module; Hypothesis notices the module's state moving and warns, though no strategy
# uses it.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_malformed_input_is_dead_lettered_with_its_field_and_good_input_stored_exactly(
    redis_client: redis.Redis,
    keys: Keys,
    db: str,
    worker: tuple[PersistLoop, threading.Thread],
) -> None:
    loop, thread = worker
    sent = Sent()
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        # Each example is a batch of entries sent to a live worker; a failure is found
        # by its dead letter or row afterwards, where shrinking could not help.
        phases=[Phase.explicit, Phase.generate],
    )
    @given(st.lists(entry_plans(), min_size=8, max_size=14), st.data(), st.integers(0, 9))
    def send(plans: list[list[tuple[str, Any]]], data: st.DataObject, big: int) -> None:
        # Hypothesis may abandon an example while drawing; only what was XADDed counts.
        mine = Sent()
        pipe = redis_client.pipeline(transaction=False)
        marks: list[Callable[[str], None]] = []
        for number, plan in enumerate(plans):
            envelope = plan[0][1]
            batch_id = new_batch_id()
            lines: list[bytes] = []
            expectations: list[tuple[int, bytes, str | None]] = []
            for position, (kind, value) in enumerate(plan[1:]):
                if kind == "good":
                    line = good_line(value)
                    expectations.append((position, line, None))
                else:
                    record = orjson.loads(good_line(data.draw(good_traces)))
                    breaker = RECORD_BREAKERS[value]
                    # One megabyte record in about one example of ten keeps Redis small.
                    if big == 0 and number == 0 and position == 0:
                        breaker = megabytes
                        mine.megabyte_records += 1
                    line, name = breaker(record, data)
                    mine.count(breaker.__name__)
                    expectations.append((position, line, name))
                lines.append(line)
            fields = encode_lines(Kind.TRACE, lines, batch_id)
            if envelope is not None:
                label, breaker_fn = ENVELOPE_BREAKERS[envelope]
                must_say = breaker_fn(fields)
                mine.count(f"envelope_{label}")

                def entry_mark(entry_id: str, must_say: str = must_say) -> None:
                    mine.bad_entries[entry_id] = must_say

                marks.append(entry_mark)
            else:
                for position, line, name in expectations:
                    if name is None:
                        mine.good[str(orjson.loads(line)["trace_id"])] = line
                    else:
                        mine.bad_records[(batch_id, position)] = (line, name)
                marks.append(lambda entry_id: None)
            pipe.xadd(keys.traces, fields)  # type: ignore[arg-type]
            mine.entries += 1
        for mark, entry_id in zip(marks, pipe.execute(), strict=True):
            mark(entry_id.decode())
        sent.merge(mine)
        assert thread.is_alive(), "the worker stopped"

    send()
    sent_s = time.monotonic() - started
    assert sent.entries >= 1000
    expected_dead = len(sent.bad_entries) + len(sent.bad_records)

    def dead_letters() -> int:
        return int(redis_client.xlen(keys.dead_letters(PERSIST_GROUP)))

    try:
        wait_until(
            lambda: stored_rows(db) >= len(sent.good) and dead_letters() >= expected_dead,
            timeout_s=120,
            message="every entry handled",
        )
    except AssertionError:
        figures = (stored_rows(db), len(sent.good), dead_letters(), expected_dead)
        raise AssertionError(
            f"rows {figures[0]}/{figures[1]}, dead {figures[2]}/{figures[3]}, "
            f"stats {loop.stats.snapshot()}"
        ) from None
    caught_up_s = time.monotonic() - started - sent_s
    assert thread.is_alive(), "the worker stopped"
    wait_until(lambda: persist_pending(redis_client, keys) == 0, timeout_s=30, message="all acked")

    # Every bad entry and record: one dead letter, a reason naming the field, bytes kept.
    letters = list_dead_letters(redis_client, keys, PERSIST_GROUP)
    assert len(letters) == expected_dead
    seen_entries: set[str] = set()
    seen_records: set[tuple[str, int]] = set()
    for _, letter in letters:
        if letter.record is None:
            must_say = sent.bad_entries[letter.entry_id]
            assert must_say in letter.reason, (must_say, letter.reason)
            assert letter.original is not None
            seen_entries.add(letter.entry_id)
        else:
            assert letter.batch_id is not None and letter.position is not None
            key = (letter.batch_id, letter.position)
            line, name = sent.bad_records[key]
            assert (
                letter.reason.startswith(name)
                or f"{name}:" in letter.reason
                or (f"'{name}'" in letter.reason)
            ), (name, letter.reason)
            assert letter.record == line
            seen_records.add(key)
    assert seen_entries == set(sent.bad_entries)
    assert seen_records == set(sent.bad_records)

    # Every good record: one row, and the row written out again is the line sent.
    rows = fetch_rows(db)
    assert set(rows) == set(sent.good)
    for trace_id, line in sent.good.items():
        assert rows[trace_id] == line, trace_id
        assert_fields_equal(rows[trace_id], line)

    report(
        "bad_input",
        {
            "entries_sent": sent.entries,
            "good_records_sent": len(sent.good),
            "rows_stored": len(rows),
            "bad_entries_sent": len(sent.bad_entries),
            "bad_records_sent": len(sent.bad_records),
            "dead_letters": len(letters),
            "megabyte_records": sent.megabyte_records,
            "breakers": dict(sorted(sent.kinds.items())),
            "send_s": round(sent_s, 2),
            "catch_up_after_send_s": round(caught_up_s, 2),
            "worker_alive": thread.is_alive(),
            "loop_dead_letters": loop.stats.dead_letters,
        },
    )


def stored_rows(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM llm_traces").fetchone()
    assert row is not None
    return int(row[0])


def persist_pending(client: redis.Redis, keys: Keys) -> int:
    return int(client.xpending(keys.traces, PERSIST_GROUP)["pending"])  # type: ignore[index]


COLUMNS = tuple(LLMTrace.model_fields)


def fetch_rows(db: str) -> dict[str, bytes]:
    """Each row as the JSON line its values make, fields in the model's order."""
    rows = {}
    with psycopg.connect(db) as conn:
        cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM llm_traces")
        for values in cursor:
            record = dict(zip(COLUMNS, values, strict=True))
            record["started_at"] = record["started_at"].astimezone(UTC)
            # No tags or metadata are stored as NULL (schema version 4).
            record["tags"] = record["tags"] or []
            record["metadata"] = record["metadata"] or {}
            rows[str(record["trace_id"])] = orjson.dumps(record, option=orjson.OPT_UTC_Z)
    return rows


def assert_fields_equal(stored: bytes, sent: bytes) -> None:
    got, want = orjson.loads(stored), orjson.loads(sent)
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name] == value, name
        assert type(got[name]) is type(value), name
