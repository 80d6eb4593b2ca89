"""The one place tests build records and stream entries.

    llm_trace(shape, **fields)    an LLM call: openai gpt-4o, every other field from
                                  ``shape`` (a dict, optional) and ``fields``, else
                                  LLMTrace's default
    numbered_trace(i, shape, **fields)
                                  the i-th of a varied run: plan, decision, tokens, latency
                                  and tool calls differ with i, the same for the same i
    metric_sample(**fields)       one tool.invocation_duration_ms observation
    numbered_sample(i, **fields)  the same with value float(i)
    trace_entry / sample_entry    the fields of one stream entry in the real format
    add_traces / add_samples      XADD such an entry; its id
    good_traces, good_line        Hypothesis: the fields of a valid record, names full of
                                  SQL and shell metacharacters; a record's JSON line
    RECORD_BREAKERS, ENVELOPE_BREAKERS
                                  how a good record or an entry's envelope is broken, and
                                  the field the dead letter's reason must name

In every builder ``fields`` win over ``shape`` and the defaults, so a test names exactly
the values its assertions depend on. A module whose tests share more fields keeps them
in a module-level dict passed as the shape: ``llm_trace(CALL, prompt_tokens=i)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from hypothesis import strategies as st

from fleettrace.codec import Kind, encode_batch, encode_record, new_batch_id
from fleettrace.keys import Keys
from fleettrace.metrics import MetricKey
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
    MetricSample,
)
from fleettrace_worker.store.repository import MetricRow


def llm_trace(shape: Mapping[str, Any] | None = None, /, **fields: Any) -> LLMTrace:
    """An LLM call of openai's gpt-4o unless ``shape`` or ``fields`` say otherwise."""
    return LLMTrace(**{"provider": "openai", "model": "gpt-4o", **(shape or {}), **fields})


def numbered_trace(i: int, shape: Mapping[str, Any] | None = None, /, **fields: Any) -> LLMTrace:
    """The i-th call of a varied run (seven plans, a tool call every third call)."""
    varied: dict[str, Any] = {
        "plan_id": f"plan-{i % 7}",
        "decision_id": f"d-{i}",
        "actor": "planner",
        "prompt_tokens": 100 + i % 50,
        "completion_tokens": 20 + i % 9,
        "latency_ms": float(10 + i % 100),
        "tool_calls": ["search"] if i % 3 == 0 else [],
    }
    return llm_trace({**varied, **(shape or {})}, **fields)


def metric_sample(shape: Mapping[str, Any] | None = None, /, **fields: Any) -> MetricSample:
    """A tool.invocation_duration_ms observation of tool "search" unless ``shape`` or
    ``fields`` say otherwise."""
    defaults: dict[str, Any] = {
        "key": MetricKey.TOOL_INVOCATION_DURATION_MS,
        "labels": {"tool": "search"},
        "value": 1.0,
    }
    return MetricSample(**{**defaults, **(shape or {}), **fields})


def numbered_sample(i: int, **fields: Any) -> MetricSample:
    return metric_sample(**{"value": float(i), **fields})


def trace_entry(traces: Sequence[LLMTrace], batch_id: str | None = None) -> dict[bytes, bytes]:
    """The fields of one trace entry as the emitter writes it."""
    return encode_batch(Kind.TRACE, traces, batch_id or new_batch_id())


def sample_entry(
    samples: Sequence[MetricSample], batch_id: str | None = None
) -> dict[bytes, bytes]:
    return encode_batch(Kind.METRIC, samples, batch_id or new_batch_id())


def add_traces(client: redis.Redis, keys: Keys, traces: Sequence[LLMTrace]) -> str:
    """XADD one entry holding ``traces``; its entry id."""
    entry_id = client.xadd(keys.traces, trace_entry(traces))  # type: ignore[arg-type]
    return str(entry_id.decode())


def add_samples(client: redis.Redis, keys: Keys, samples: Sequence[MetricSample]) -> str:
    entry_id = client.xadd(keys.metrics, sample_entry(samples))  # type: ignore[arg-type]
    return str(entry_id.decode())


def _trace(i: int, plan: str = "", cost: float | None = None) -> LLMTrace:
    priced = {} if cost is None else {"cost_usd": cost}
    return llm_trace(
        plan_id=plan or f"plan-{i % 3}",
        actor="a",
        provider="openai",
        model="gpt-4o",
        prompt_tokens=i + 1,
        **priced,  # type: ignore[arg-type]
    )


#: The calls the storage commands' tests store (started now unless a test says when).
STORED_CALL = {
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "cost_usd": 0.5,
    "latency_ms": 100.0,
}


#: The calls the forwarding tests forward; each names its plan (or None).
RUN_CALL = {"prompt_tokens": 10, "completion_tokens": 5, "latency_ms": 20.0}


# -- Hypothesis: good records, and how records and envelopes are broken ---------------

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


def good_line(values: dict[str, Any]) -> bytes:
    return encode_record(LLMTrace(trace_id=uuid.uuid4(), **values))


NOW = datetime.now(UTC)


def _samples(count: int, start: int, at: datetime) -> list[MetricRow]:
    batch = str(uuid.uuid4())
    return [(batch, i, metric_sample(value=float(start + i), observed_at=at)) for i in range(count)]
