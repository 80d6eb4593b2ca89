"""The stream format: how a batch of records becomes one Redis stream entry and back.

Version 3. One stream entry carries one batch of records of one kind, so Redis and
redis-py pay their per-entry cost once per batch rather than once per record::

    field  value
    v      b"3"                      format version
    k      b"t" | b"m" | b"o" | b"p" kind: LLMTrace records, metric samples, tool
                                     calls (ToolCall) or plan records (PlanRecord)
    b      32 lowercase hex digits   batch id, unique per batch (idempotency key)
    n      decimal count             number of records in d
    d      JSON lines                one JSON object per record, joined by b"\\n"

Each record is the JSON of the model (``LLMTrace`` or ``MetricSample``) with every
field present, timestamps in RFC 3339 UTC with a ``Z``.

What each version's records hold: version 1, the 16 ``LLMTrace`` fields of the seed,
tokens always numbers. Version 2 adds the token details (``cache_read_tokens``,
``cache_write_tokens``, ``reasoning_tokens``, ``audio_input_tokens``,
``audio_output_tokens``, each a number or ``null`` for "not reported") and lets
``prompt_tokens``/``completion_tokens`` be ``null`` (usage unknown). A record may
leave the token details out (a version 1 record, or one replayed from a dead letter
written then): they mean "not reported", which is what ``null`` says.
Version 3 adds the attributes (:mod:`fleettrace.attributes`): ``tags`` (a list of
strings), ``metadata`` (an object of scalars), ``user_id``, ``session_id`` and
``ttft_ms`` (a number or ``null``); a record of version 2 or before leaves them out,
which reads as no tags, no metadata and ``null``. Version 3 also adds the
plan tree (:mod:`fleettrace.tree_records`): the kinds ``o`` (tool calls) and ``p``
(plan records), and on ``LLMTrace`` the fields ``root_plan_id``, ``root_started_at``
and ``plan_path``; a record of an older version leaves them out, which means "placed
by its plan alone" (``null``, ``null`` and ``[]``). JSON never holds a raw
newline inside a value, so splitting ``d`` on ``\\n`` is exact.

Decoding checks the envelope first (a bad one raises :class:`EntryDecodeError` and
the whole entry is a dead letter), then validates each record on its own: a bad
record is returned as a :class:`RecordError` naming the field, and the good records
of the same entry are still returned whole.

Rolling upgrades: agents and workers are upgraded at different times, so a worker
decodes every version in :data:`READABLE_VERSIONS` (its own and the one before it,
each with the envelope fields of its time in :data:`_ENVELOPES`), and an entry of a
*newer* version than it knows is not its to judge: :func:`newer_version` names it,
and the worker leaves the entry pending for an upgraded worker instead of
dead-lettering it. When the format changes, the new version is added here with
what its envelope holds, ``FORMAT_VERSION`` moves to it, the version before stays
readable for one release, and a frozen entry of each readable version is kept in
``tests/fixtures/wire/`` (``tests/test_wire_versions.py`` decodes and stores them).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import orjson
from pydantic import BaseModel, ValidationError

from fleettrace.errors import EntryDecodeError
from fleettrace.keys import FIELD_BATCH_ID, FIELD_COUNT, FIELD_DATA, FIELD_KIND, FIELD_VERSION
from fleettrace.model import (
    ATTRIBUTE_FIELDS,
    TOKEN_DETAIL_FIELDS,
    TREE_PLACE_FIELDS,
    LLMTrace,
    MetricSample,
)
from fleettrace.tree_records import AnyRecord, PlanRecord, ToolCall

FORMAT_VERSION: Final = b"3"
#: The version this code writes, as a number.
CURRENT_VERSION: Final = int(FORMAT_VERSION)
RECORD_SEPARATOR: Final = b"\n"
_BATCH_ID_RE: Final = re.compile(rb"^[0-9a-f]{32}$")
_JSON_COLUMN_RE: Final = re.compile(r"line 1 column (\d+)")
_JSON_KEY_RE: Final = re.compile(rb'(?<!\\)"([A-Za-z_][A-Za-z0-9_]*)"\s*:')
_JSON_OPTIONS: Final = orjson.OPT_UTC_Z
_ENCODE_CHUNK: Final = 128
#: The envelope fields of each version this code decodes, by version.
_ENVELOPES: Final[dict[bytes, frozenset[bytes]]] = {
    b"1": frozenset((FIELD_VERSION, FIELD_KIND, FIELD_BATCH_ID, FIELD_COUNT, FIELD_DATA)),
    b"2": frozenset((FIELD_VERSION, FIELD_KIND, FIELD_BATCH_ID, FIELD_COUNT, FIELD_DATA)),
    # Version 3: the same envelope; records gain the attribute and plan tree fields,
    # and the kinds o (tool calls) and p (plan records) exist.
    b"3": frozenset((FIELD_VERSION, FIELD_KIND, FIELD_BATCH_ID, FIELD_COUNT, FIELD_DATA)),
}
#: Fields a record may leave out (the token details did not exist in version 1, the
#: attributes and the tree place not before version 3; missing means "not reported" /
#: none / "not placed in a tree"). Every other field must be present.
MAY_BE_ABSENT: Final = frozenset((*TOKEN_DETAIL_FIELDS, *ATTRIBUTE_FIELDS, *TREE_PLACE_FIELDS))
#: Every version this code decodes: its own and (once there is one) the one before.
READABLE_VERSIONS: Final = frozenset(int(version) for version in _ENVELOPES)
#: A version field longer than this is not a version (it is a bad envelope).
_VERSION_DIGITS: Final = 6


class Kind(StrEnum):
    TRACE = "t"
    METRIC = "m"
    # Format version 3: the plan tree.
    TOOL = "o"
    PLAN = "p"


_MODELS: Final[dict[Kind, type[AnyRecord]]] = {
    Kind.TRACE: LLMTrace,
    Kind.METRIC: MetricSample,
    Kind.TOOL: ToolCall,
    Kind.PLAN: PlanRecord,
}
#: The kinds each version's entries may hold: the tree kinds came with version 3.
_KINDS: Final[dict[bytes, frozenset[Kind]]] = {
    b"1": frozenset((Kind.TRACE, Kind.METRIC)),
    b"2": frozenset((Kind.TRACE, Kind.METRIC)),
    b"3": frozenset(Kind),
}
#: The record kind of each model, for the encoder.
KIND_OF: Final[dict[type[AnyRecord], Kind]] = {model: kind for kind, model in _MODELS.items()}


@dataclass(frozen=True, slots=True)
class RecordError:
    """A record of a batch that did not decode or validate, with why."""

    index: int
    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """The good records of an entry with their positions in it, and the bad ones.

    ``(batch_id, position)`` names a record for good, which is what makes storing a
    metric sample (which has no id of its own) idempotent.
    """

    kind: Kind
    batch_id: str
    records: list[AnyRecord]
    positions: list[int]
    errors: list[RecordError]


def new_batch_id() -> str:
    return uuid.uuid4().hex


def encode_record(record: AnyRecord) -> bytes:
    """One record as JSON. A pydantic v2 model keeps its fields in ``__dict__`` in
    declaration order, which orjson serialises about ten times faster than
    ``model_dump_json``."""
    return orjson.dumps(record.__dict__, option=_JSON_OPTIONS)


def encode_batch(kind: Kind, records: Iterable[AnyRecord], batch_id: str) -> dict[bytes, bytes]:
    # Joined in chunks: holding a thousand small orjson outputs alive at once made
    # glibc's allocator trim and re-fault the heap on every batch (about 7 µs instead
    # of 1 µs per record here); chunks of 128 keep encoding at orjson's own speed.
    records = list(records)
    chunks = [
        RECORD_SEPARATOR.join([encode_record(r) for r in records[i : i + _ENCODE_CHUNK]])
        for i in range(0, len(records), _ENCODE_CHUNK)
    ]
    return {
        FIELD_VERSION: FORMAT_VERSION,
        FIELD_KIND: kind.value.encode(),
        FIELD_BATCH_ID: batch_id.encode(),
        FIELD_COUNT: str(len(records)).encode(),
        FIELD_DATA: RECORD_SEPARATOR.join(chunks),
    }


def encode_lines(kind: Kind, lines: list[bytes], batch_id: str) -> dict[bytes, bytes]:
    """Wrap already-encoded records (for example dead letters being replayed)."""
    return {
        FIELD_VERSION: FORMAT_VERSION,
        FIELD_KIND: kind.value.encode(),
        FIELD_BATCH_ID: batch_id.encode(),
        FIELD_COUNT: str(len(lines)).encode(),
        FIELD_DATA: RECORD_SEPARATOR.join(lines),
    }


def _field(fields: Mapping[bytes, bytes], name: bytes) -> bytes:
    try:
        return fields[name]
    except KeyError:
        raise EntryDecodeError(f"entry has no field {name.decode()!r}") from None


def newer_version(fields: Mapping[bytes, bytes]) -> int | None:
    """The format version of an entry written by a newer fleettrace than this code
    (a decimal number above every readable version), else None. Such an entry is not
    bad input: it waits for a worker that reads its version."""
    version = fields.get(FIELD_VERSION)
    if version is None or not version.isdigit() or len(version) > _VERSION_DIGITS:
        return None
    number = int(version)
    return number if number > max(READABLE_VERSIONS) else None


def decode_envelope(fields: Mapping[bytes, bytes]) -> tuple[Kind, str, list[bytes]]:
    """Check an entry's envelope and split its records, without validating them."""
    kind, batch_id, data = check_envelope(fields)
    return kind, batch_id, data.split(RECORD_SEPARATOR) if data else []


def check_envelope(fields: Mapping[bytes, bytes]) -> tuple[Kind, str, bytes]:
    """Check an entry's envelope; its records stay joined in the returned ``d`` (a
    reader that decodes them all at once need not split them)."""
    version = _field(fields, FIELD_VERSION)
    envelope = _ENVELOPES.get(version)
    if envelope is None:
        shown = version[:32].decode("utf-8", "backslashreplace")
        readable = ", ".join(str(v) for v in sorted(READABLE_VERSIONS))
        raise EntryDecodeError(
            f"unknown format version {shown!r}; this code reads version {readable}"
        )
    extra = set(fields) - envelope
    if extra:
        names = ", ".join(sorted(repr(n.decode("utf-8", "backslashreplace")) for n in extra))
        raise EntryDecodeError(f"entry has unknown fields: {names}")
    raw_kind = _field(fields, FIELD_KIND)
    kinds = _KINDS[version]
    try:
        kind = Kind(raw_kind.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        kind = None
    if kind not in kinds:
        named = " or ".join(repr(k.value) for k in Kind if k in kinds)
        raise EntryDecodeError(
            f"field 'k' must be {named} in a version {version.decode()} entry, "
            f"got {raw_kind[:32]!r}"
        )
    assert kind is not None
    batch_id = _field(fields, FIELD_BATCH_ID)
    if not _BATCH_ID_RE.match(batch_id):
        raise EntryDecodeError(f"field 'b' must be 32 lowercase hex digits, got {batch_id[:40]!r}")
    raw_count = _field(fields, FIELD_COUNT)
    if not raw_count.isdigit() or len(raw_count) > 9:
        raise EntryDecodeError(f"field 'n' must be a decimal count, got {raw_count[:32]!r}")
    count = int(raw_count)
    data = _field(fields, FIELD_DATA)
    found = data.count(RECORD_SEPARATOR) + 1 if data else 0
    if found != count:
        raise EntryDecodeError(f"field 'n' says {count} records but field 'd' holds {found}")
    return kind, batch_id.decode("ascii"), data


def _field_at_json_error(line: bytes, message: str) -> str | None:
    """The key whose value holds the byte where a JSON parse failed (invalid UTF-8,
    a bad escape), so the reason names a field even when the line is not JSON."""
    column = _JSON_COLUMN_RE.search(message)
    if column is None:
        return None
    names = _JSON_KEY_RE.findall(line[: int(column.group(1))])
    return names[-1].decode("ascii") if names else None


def describe_validation_error(error: ValidationError, line: bytes | None = None) -> str:
    """One line naming each failing field: ``prompt_tokens: Input should be ...``."""
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        location = ".".join(str(p) for p in item["loc"])
        if not location and item["type"] == "json_invalid" and line is not None:
            location = _field_at_json_error(line, item["msg"]) or ""
        parts.append(f"{location or 'record'}: {item['msg']}")
    return "; ".join(parts)


def decode_record(kind: Kind, line: bytes) -> AnyRecord:
    """Validate one record; raises ``ValidationError``."""
    model: type[BaseModel] = _MODELS[kind]
    return model.model_validate_json(line)  # type: ignore[return-value]


def check_record(kind: Kind, index: int, line: bytes) -> AnyRecord | RecordError:
    """One record validated as the worker stores it, or why it is refused."""
    model = _MODELS[kind]
    try:
        record = model.model_validate_json(line)
    except ValidationError as error:
        return RecordError(index, line, describe_validation_error(error, line))
    if len(record.model_fields_set) != len(model.model_fields):
        # The encoder writes every field; a record missing one was not made by it,
        # and a default must not silently stand in for a value that was lost.
        absent = set(model.model_fields) - record.model_fields_set
        if absent - MAY_BE_ABSENT:
            missing = ", ".join(sorted(absent - MAY_BE_ABSENT))
            return RecordError(index, line, f"{missing}: Field missing from the record")
    return record


def decode_lines(kind: Kind, batch_id: str, lines: list[bytes]) -> DecodedBatch:
    """The records of an entry whose envelope :func:`decode_envelope` accepted."""
    records: list[AnyRecord] = []
    positions: list[int] = []
    errors: list[RecordError] = []
    for index, line in enumerate(lines):
        checked = check_record(kind, index, line)
        if isinstance(checked, RecordError):
            errors.append(checked)
            continue
        records.append(checked)
        positions.append(index)
    return DecodedBatch(kind, batch_id, records, positions, errors)


def decode_entry(fields: Mapping[bytes, bytes]) -> DecodedBatch:
    return decode_lines(*decode_envelope(fields))
