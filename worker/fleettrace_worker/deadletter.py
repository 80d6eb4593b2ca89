"""Dead letters: what a consumer group could not handle, kept with the reason why.

A dead letter is one entry of the stream ``keys.dead_letters(group)``. It names the
stream and entry it came from, the consumer that saw it and the reason, and carries
the data as it arrived, byte for byte:

* a record that did not validate keeps its raw JSON line, its batch id and its
  position in the batch;
* an entry that could not be handled as a whole (a bad envelope, or delivered too
  many times) keeps every original field under ``f:<name>``.

Replaying puts a dead letter back on the stream it came from once its cause is
fixed. A record travels in a batch of its own whose id is derived from (original
batch id, position), so a replay repeated after a crash stores the record once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from fleettrace.codec import Kind, decode_entry, decode_envelope, encode_lines
from fleettrace.errors import ConfigurationError, EntryDecodeError
from fleettrace.keys import (
    DEAD_BATCH_ID,
    DEAD_CONSUMER,
    DEAD_ENTRY_ID,
    DEAD_KIND,
    DEAD_ORIGINAL_PREFIX,
    DEAD_POSITION,
    DEAD_REASON,
    DEAD_RECORD,
    DEAD_STREAM,
    Keys,
)
from fleettrace.redis_errors import translate_redis_errors

_ENTRY_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record or one whole entry that a group gave up on."""

    reason: str
    stream: str
    entry_id: str
    consumer: str
    batch_id: str | None = None
    kind: str | None = None
    position: int | None = None
    record: bytes | None = None
    original: Mapping[bytes, bytes] | None = field(default=None, repr=False)

    @classmethod
    def for_entry(
        cls, stream: str, entry_id: str, fields: Mapping[bytes, bytes], consumer: str, reason: str
    ) -> DeadLetter:
        return cls(reason, stream, entry_id, consumer, original=dict(fields))

    @classmethod
    def for_record(
        cls,
        stream: str,
        entry_id: str,
        consumer: str,
        *,
        batch_id: str,
        kind: Kind,
        position: int,
        record: bytes,
        reason: str,
    ) -> DeadLetter:
        return cls(reason, stream, entry_id, consumer, batch_id, kind.value, position, record)

    def to_fields(self) -> dict[bytes, bytes]:
        fields = {
            DEAD_REASON: self.reason.encode("utf-8", "backslashreplace"),
            DEAD_STREAM: self.stream.encode(),
            DEAD_ENTRY_ID: self.entry_id.encode(),
            DEAD_CONSUMER: self.consumer.encode(),
        }
        if self.batch_id is not None:
            fields[DEAD_BATCH_ID] = self.batch_id.encode()
        if self.kind is not None:
            fields[DEAD_KIND] = self.kind.encode()
        if self.position is not None:
            fields[DEAD_POSITION] = str(self.position).encode()
        if self.record is not None:
            fields[DEAD_RECORD] = self.record
        for name, value in (self.original or {}).items():
            fields[DEAD_ORIGINAL_PREFIX + name] = value
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> DeadLetter:
        def text(name: bytes) -> str | None:
            value = fields.get(name)
            return None if value is None else value.decode("utf-8", "backslashreplace")

        prefix = len(DEAD_ORIGINAL_PREFIX)
        original = {
            name[prefix:]: value
            for name, value in fields.items()
            if name.startswith(DEAD_ORIGINAL_PREFIX)
        }
        position = fields.get(DEAD_POSITION)
        return cls(
            reason=text(DEAD_REASON) or "",
            stream=text(DEAD_STREAM) or "",
            entry_id=text(DEAD_ENTRY_ID) or "",
            consumer=text(DEAD_CONSUMER) or "",
            batch_id=text(DEAD_BATCH_ID),
            kind=text(DEAD_KIND),
            position=int(position) if position is not None and position.isdigit() else None,
            record=fields.get(DEAD_RECORD),
            original=original or None,
        )


def replay_batch_id(batch_id: str, position: int) -> str:
    """The batch id a replayed record travels under: the same for every replay of it."""
    return hashlib.blake2b(f"{batch_id}:{position}".encode(), digest_size=16).hexdigest()


def list_dead_letters(
    client: redis.Redis, keys: Keys, group: str, *, count: int | None = None
) -> list[tuple[str, DeadLetter]]:
    """Dead letters of ``group``, oldest first, with their ids in the dead-letter stream."""
    with translate_redis_errors("reading dead letters"):
        rows: Any = client.xrange(keys.dead_letters(group), count=count)
    return [(entry_id.decode(), DeadLetter.from_fields(fields)) for entry_id, fields in rows]


@dataclass(slots=True)
class ReplayReport:
    """What a replay did: which dead letters went home and which still fail, and why."""

    replayed: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def replay_fields(keys: Keys, letter: DeadLetter) -> tuple[str, dict[bytes, bytes]]:
    """The stream and the entry that bring ``letter`` home; ``ValueError`` says why not.

    The current code must accept what is replayed, else replaying would only make
    the same dead letter again.
    """
    if letter.stream not in keys.streams:
        raise ValueError(f"came from {letter.stream!r}, not a stream of this namespace")
    if letter.record is not None:
        if letter.batch_id is None or letter.kind is None or letter.position is None:
            raise ValueError("record dead letter lacks its batch id, kind or position")
        try:
            kind = Kind(letter.kind)
        except ValueError:
            raise ValueError(f"unknown record kind {letter.kind!r}") from None
        fields = encode_lines(
            kind, [letter.record], replay_batch_id(letter.batch_id, letter.position)
        )
        errors = decode_entry(fields).errors
        if errors:
            raise ValueError(f"record still fails: {errors[0].reason}")
        return letter.stream, fields
    if letter.original is None:
        raise ValueError("dead letter holds neither a record nor an entry")
    try:
        decode_envelope(letter.original)
    except EntryDecodeError as error:
        raise ValueError(f"entry still fails: {error}") from None
    return letter.stream, dict(letter.original)


def replay_dead_letters(
    client: redis.Redis, keys: Keys, group: str, ids: Sequence[str] | None = None
) -> ReplayReport:
    """Put dead letters of ``group`` back on their streams (all of them when ``ids`` is
    None). Each is deleted from the dead-letter stream only after its XADD succeeded;
    a crash in between replays it again under the same batch id, which stores once."""
    dlq = keys.dead_letters(group)
    report = ReplayReport()
    if ids is None:
        letters = list_dead_letters(client, keys, group)
    else:
        bad = [wanted for wanted in ids if not _ENTRY_ID_RE.match(wanted)]
        if bad:
            raise ConfigurationError(
                f"not a stream entry id: {bad[0]!r} (expected like 1700000000000-0)"
            )
        letters = []
        with translate_redis_errors("reading dead letters"):
            for wanted in ids:
                rows: Any = client.xrange(dlq, min=wanted, max=wanted)
                if rows:
                    letters.append((wanted, DeadLetter.from_fields(rows[0][1])))
                else:
                    report.missing.append(wanted)
    for dead_id, letter in letters:
        try:
            stream, fields = replay_fields(keys, letter)
        except ValueError as error:
            report.refused.append((dead_id, str(error)))
            continue
        with translate_redis_errors("replaying a dead letter"):
            client.xadd(stream, fields)  # type: ignore[arg-type]
            client.xdel(dlq, dead_id)
        report.replayed.append(dead_id)
    return report
