"""Malformed input of every kind, mixed with good records, into a running worker.

Hypothesis makes thousands of entries: envelopes with an unknown version, missing,
extra or malformed fields and invalid UTF-8; records with missing and extra fields,
wrong types, negative and huge numbers, NaN and infinity, megabyte strings and
invalid UTF-8; and good records full of SQL and shell metacharacters. The ``persist``
loop runs the whole time. Afterwards every bad entry or record is a dead letter whose
reason names the field, kept byte for byte, and every good record is a row that,
serialised again, is byte for byte the JSON line that was sent.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fleettrace.codec import (
    FORMAT_VERSION,
    Kind,
    decode_entry,
    describe_validation_error,
    encode_lines,
    encode_record,
    new_batch_id,
)
from fleettrace.keys import Keys
from fleettrace.model import (
    ATTRIBUTE_FIELDS,
    MAX_COST_USD,
    MAX_LATENCY_MS,
    MAX_NAME_CHARS,
    MAX_RETRIES,
    MAX_TOKENS,
    TOKEN_DETAIL_FIELDS,
    TREE_PLACE_FIELDS,
    LLMTrace,
)
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters
from fleettrace_worker.stream.loop import LoopSettings
from tests.reliability import report
from tests.waiting import wait_until
from tests.worker_helpers import migrated

pytestmark = pytest.mark.slow

EXAMPLES = 150
MEGABYTE = 1 << 20

#: Values that break naive SQL building or shell quoting; valid names all the same.
METACHARACTERS = [
    "'; DROP TABLE llm_traces; --",
    'Robert"); DELETE FROM llm_traces WHERE (1=1',
    "$(rm -rf /)",
    "`id`",
    "a && b || c; d | e > f < g",
    "${HOME} %s %n %x {0} \\N \\. \\\\",
    "\\x00 is not a NUL",
    "tab\there, newline\nthere\r",
    "\u202eevil\u202c",
    "emoji 😀 and CJK 漢字",
    "COPY llm_traces FROM PROGRAM 'id'",
    "--",
    "*",
    "?",
]

text_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def names(max_size: int = 24) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(METACHARACTERS),
        st.text(text_chars, min_size=1, max_size=max_size),
        # The longest names the model takes, in one-byte and multi-byte characters.
        st.sampled_from(["n" * MAX_NAME_CHARS, "é" * MAX_NAME_CHARS, "😀" * MAX_NAME_CHARS]),
    )


good_traces = st.builds(
    dict,
    plan_id=st.none() | names(),
    decision_id=st.none() | names(),
    actor=st.none() | names(),
    provider=names(),
    model=names(),
    prompt_tokens=st.none() | st.integers(0, MAX_TOKENS),
    completion_tokens=st.none() | st.integers(0, MAX_TOKENS),
    cost_usd=st.none() | st.floats(0, MAX_COST_USD, allow_nan=False),
    latency_ms=st.floats(0, MAX_LATENCY_MS, allow_nan=False),
    tool_calls=st.lists(names(), max_size=5),
    context_hash=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    streaming=st.booleans(),
    retry_count=st.integers(0, MAX_RETRIES),
    error=st.none() | st.text(text_chars, max_size=200) | st.sampled_from(METACHARACTERS),
    started_at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    # Parts of their totals: zero always fits, whatever the total drawn.
    cache_read_tokens=st.none() | st.just(0),
    cache_write_tokens=st.none() | st.just(0),
    reasoning_tokens=st.none() | st.just(0),
    audio_input_tokens=st.none() | st.just(0),
    audio_output_tokens=st.none() | st.just(0),
)

# -- how a good record is broken: each returns the new JSON line and the field named ---

INT_FIELDS = ("prompt_tokens", "completion_tokens", "retry_count", *TOKEN_DETAIL_FIELDS)
FLOAT_FIELDS = ("latency_ms", "cost_usd")
TEXT_FIELDS = ("provider", "model", "plan_id", "decision_id", "actor", "error")
ALL_FIELDS = tuple(LLMTrace.model_fields)
#: Fields whose absence is refused (the token details, the attributes and the plan tree
#: place may be absent: "not reported", none, "not placed in a tree").
REQUIRED_FIELDS = tuple(
    name
    for name in ALL_FIELDS
    if name not in (*TOKEN_DETAIL_FIELDS, *ATTRIBUTE_FIELDS, *TREE_PLACE_FIELDS)
)
_RAW = "\x01raw\x01"


def _dump(record: dict[str, Any], raw: bytes | None = None) -> bytes:
    line = orjson.dumps(record)
    return line if raw is None else line.replace(orjson.dumps(_RAW), raw)


Breaker = Callable[[dict[str, Any], st.DataObject], tuple[bytes, str]]


def missing_field(record: dict[str, Any], data: st.DataObject) -> tuple[bytes, str]:
    name = data.draw(st.sampled_from(REQUIRED_FIELDS))
    del record[name]
    return _dump(record), name


def extra_field(record: dict[str, Any], data: st.DataObject) -> tuple[bytes, str]:
    name = data.draw(st.sampled_from(["extra", "trace", "cost", "__proto__", "Model"]))
    record[name] = data.draw(
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.none())
    )
    return _dump(record), name


def wrong_type(record: dict[str, Any], data: st.DataObject) -> tuple[bytes, str]:
    name = data.draw(st.sampled_from(ALL_FIELDS))
    wrong = {
        "trace_id": [123, "not-a-uuid", []],
        "provider": [12, None, ["openai"], {"a": 1}, True, ""],
        "model": [1.5, None, [], ""],
        "plan_id": [7, [], ""],
        "decision_id": [False, {}],
        "actor": [3.0, [1]],
        "prompt_tokens": ["12", 1.5, True, [1]],
        "completion_tokens": ["0", {}],
        "cost_usd": ["0.1", [], True],
        "latency_ms": ["fast", None, {}],
        "tool_calls": ["search", [1], [None], {}, None, [""]],
        "context_hash": [12, "XYZ", "ab" * 31],
        "streaming": ["yes", 1, None],
        "retry_count": ["1", -1.5, None],
        "error": [404, {"message": "x"}],
        "started_at": [
            "yesterday",
            1700000000,
            None,
            "2026-01-01T00:00:00",
            "2026-13-01T00:00:00Z",
        ],
        "cache_read_tokens": ["1", 1.5, True],
        "cache_write_tokens": [[], {}],
        "reasoning_tokens": ["0", False],
        "audio_input_tokens": [0.5],
        "audio_output_tokens": ["many"],
        "tags": ["a", [1], [""], {}, None, ["x" * 65]],
        "metadata": [[], "k=v", None, {"a": [1]}, {"a": {}}, {"a": None}, {"": 1}],
        "user_id": [1, "", []],
        "session_id": [{}, ""],
        "ttft_ms": ["1", -1.0, True, "NaN"],
        "root_plan_id": [1, "", []],
        "root_started_at": ["yesterday", 5, "2026-01-01T00:00:00"],
        "plan_path": ["p", [1], [""], {}, None, ["x"] * 33],
    }
    record[name] = data.draw(st.sampled_from(wrong[name]))
    return _dump(record), name


def out_of_range(record: dict[str, Any], data: st.DataObject) -> tuple[bytes, str]:
    name = data.draw(st.sampled_from(INT_FIELDS + FLOAT_FIELDS))
    choices: list[bytes] = [b"-1", b"-1000000000000", b"1000000000001", b"1" + b"0" * 30]
    if name in FLOAT_FIELDS:
        choices += [b"-0.5", b"1e300", b"1.7976931348623157e308", b"-1e-300", b"1e400"]
    record[name] = _RAW
    return _dump(record, data.draw(st.sampled_from(choices))), name


def not_finite(record: dict[str, Any], data: st.DataObject) -> tuple[bytes, str]:
    name = data.draw(st.sampled_from(FLOAT_FIELDS))
    record[name] = _RAW
    return _dump(record, data.draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]))), name


def megabytes(record: dict[str, Any], data: st.DataObject) -> tuple[bytes, str]:
    name = data.draw(st.sampled_from((*TEXT_FIELDS, "tool_calls")))
    size = data.draw(st.integers(MEGABYTE, 2 * MEGABYTE))
    text = data.draw(st.sampled_from(["x", "é", "'", "\\"])) * size
    record[name] = [text] if name == "tool_calls" else text
    return _dump(record), name


def invalid_utf8(record: dict[str, Any], data: st.DataObject) -> tuple[bytes, str]:
    name = data.draw(st.sampled_from(TEXT_FIELDS))
    record[name] = _RAW
    raw = data.draw(st.sampled_from([b'"\xff"', b'"ab\xfe\xfd"', b'"\xc3\x28"', b'"\xed\xa0\x80"']))
    return _dump(record, raw), name


RECORD_BREAKERS: list[Breaker] = [
    missing_field,
    extra_field,
    wrong_type,
    out_of_range,
    not_finite,
    invalid_utf8,
]

# -- how an envelope is broken: returns the new fields and what the reason must say ----


def envelope_breakers() -> list[tuple[str, Callable[[dict[bytes, bytes]], str]]]:
    def version(fields: dict[bytes, bytes]) -> str:
        # A version no release wrote (a newer one is not bad input: it stays pending).
        fields[b"v"] = b"0"
        return "version"

    def version_utf8(fields: dict[bytes, bytes]) -> str:
        fields[b"v"] = b"\xff\xfe"
        return "version"

    def drop(name: bytes) -> Callable[[dict[bytes, bytes]], str]:
        def broken(fields: dict[bytes, bytes]) -> str:
            del fields[name]
            return f"'{name.decode()}'"

        return broken

    def extra(fields: dict[bytes, bytes]) -> str:
        fields[b"x"] = b"1"
        return "'x'"

    def extra_utf8(fields: dict[bytes, bytes]) -> str:
        fields[b"\xff"] = b"1"
        return "unknown fields"

    def kind(fields: dict[bytes, bytes]) -> str:
        fields[b"k"] = b"\xff"
        return "'k'"

    def batch_id(fields: dict[bytes, bytes]) -> str:
        fields[b"b"] = b"'; DROP TABLE llm_traces; --"
        return "'b'"

    def count(fields: dict[bytes, bytes]) -> str:
        fields[b"n"] = b"-1"
        return "'n'"

    def count_mismatch(fields: dict[bytes, bytes]) -> str:
        fields[b"n"] = str(int(fields[b"n"]) + 1).encode()
        return "'n'"

    return [
        ("version", version),
        ("version_utf8", version_utf8),
        *((f"missing_{n.decode()}", drop(n)) for n in (b"v", b"k", b"b", b"n", b"d")),
        ("extra", extra),
        ("extra_utf8", extra_utf8),
        ("kind", kind),
        ("batch_id", batch_id),
        ("count", count),
        ("count_mismatch", count_mismatch),
    ]


ENVELOPE_BREAKERS = envelope_breakers()


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


def good_line(values: dict[str, Any]) -> bytes:
    return encode_record(LLMTrace(trace_id=uuid.uuid4(), **values))


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
