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
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import redis

from fleettrace.codec import Kind, decode_entry, decode_envelope, encode_lines
from fleettrace.errors import ConfigurationError, EntryDecodeError
from fleettrace.keys import Keys
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.keys import (
    DEAD_BATCH_ID,
    DEAD_CONSUMER,
    DEAD_ENTRY_ID,
    DEAD_KIND,
    DEAD_ORIGINAL_PREFIX,
    DEAD_POSITION,
    DEAD_REASON,
    DEAD_RECORD,
    DEAD_STREAM,
)

log = logging.getLogger(__name__)

_ENTRY_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
#: Dead letters read per XRANGE: a dead-letter stream of millions is read in pages,
#: never into memory at once.
PAGE_SIZE: Final = 500
#: At most one log line per group this often; the letters in between are summed.
LOG_INTERVAL_S: Final = 10.0
#: Reasons named in one log line (the most frequent), and characters of each.
_LOG_REASONS: Final = 3
_LOG_REASON_CHARS: Final = 160


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


def check_ids(ids: Sequence[str]) -> None:
    bad = [wanted for wanted in ids if not _ENTRY_ID_RE.match(wanted)]
    if bad:
        raise ConfigurationError(
            f"not a stream entry id: {bad[0]!r} (expected like 1700000000000-0)"
        )


def iter_dead_letters(
    client: redis.Redis,
    keys: Keys,
    group: str,
    *,
    reason: str | None = None,
    before_id: str | None = None,
    after_id: str | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[tuple[str, DeadLetter]]:
    """Dead letters of ``group``, oldest first, read ``page_size`` at a time (XRANGE
    with COUNT from after the last id seen), so memory does not grow with the stream.

    ``reason`` keeps those whose reason contains it (case-sensitive substring);
    ``before_id`` stops at the first id not lower than it; ``after_id`` starts after
    it (where a previous page ended). Entries deleted while the iteration runs are
    simply not seen again.
    """
    dlq = keys.dead_letters(group)
    start = "-" if after_id is None else f"({after_id}"
    end = "+" if before_id is None else f"({before_id}"
    while True:
        with translate_redis_errors("reading dead letters"):
            rows: Any = client.xrange(dlq, min=start, max=end, count=page_size)
        for raw_id, fields in rows:
            letter = DeadLetter.from_fields(fields)
            if reason is None or reason in letter.reason:
                yield raw_id.decode(), letter
        if len(rows) < page_size:
            return
        start = f"({rows[-1][0].decode()}"


def list_dead_letters(
    client: redis.Redis,
    keys: Keys,
    group: str,
    *,
    count: int | None = None,
    reason: str | None = None,
) -> list[tuple[str, DeadLetter]]:
    """Dead letters of ``group``, oldest first, with their ids in the dead-letter stream
    (the first ``count`` only, when given)."""
    found: list[tuple[str, DeadLetter]] = []
    if count is not None and count <= 0:
        return found
    for item in iter_dead_letters(client, keys, group, reason=reason):
        found.append(item)
        if count is not None and len(found) >= count:
            break
    return found


@dataclass(slots=True)
class DeleteReport:
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def delete_dead_letters(
    client: redis.Redis, keys: Keys, group: str, ids: Sequence[str]
) -> DeleteReport:
    """Delete dead letters by id (once reviewed); says which ids were not there."""
    check_ids(ids)
    report = DeleteReport()
    dlq = keys.dead_letters(group)
    with translate_redis_errors("deleting dead letters"):
        pipe = client.pipeline(transaction=False)
        for wanted in ids:
            pipe.xdel(dlq, wanted)
        for wanted, removed in zip(ids, pipe.execute(), strict=True):
            (report.deleted if removed else report.missing).append(wanted)
    return report


def entry_id_at(moment: datetime) -> str:
    """The first stream id at ``moment``: ids are milliseconds since the epoch."""
    return f"{max(0, int(moment.timestamp() * 1000))}-0"


def purge_dead_letters(
    client: redis.Redis,
    keys: Keys,
    group: str,
    *,
    before: datetime,
    reason: str | None = None,
) -> int:
    """Delete the dead letters of ``group`` made before ``before`` (a dead letter's id
    is the time it was made); with ``reason``, only those whose reason contains it.
    Returns how many were deleted."""
    cutoff = entry_id_at(before)
    dlq = keys.dead_letters(group)
    if reason is None:
        # Everything older goes: one exact XTRIM, nothing read.
        with translate_redis_errors("purging dead letters"):
            return int(client.xtrim(dlq, minid=cutoff, approximate=False))
    deleted = 0
    page: list[str] = []
    for dead_id, _ in iter_dead_letters(client, keys, group, reason=reason, before_id=cutoff):
        page.append(dead_id)
        if len(page) >= PAGE_SIZE:
            deleted += _xdel(client, dlq, page)
            page = []
    if page:
        deleted += _xdel(client, dlq, page)
    return deleted


def _xdel(client: redis.Redis, stream: str, ids: list[str]) -> int:
    with translate_redis_errors("purging dead letters"):
        return int(client.xdel(stream, *ids))


class DeadLetterLog:
    """Says at WARNING that a group made dead letters: the group, how many and why.

    At most one line per group per ``interval_s``; letters made in between are summed
    into the next line (or into :meth:`flush` at exit), so a flood of bad input is a
    line every few seconds, not a line per record.
    """

    def __init__(
        self,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.logger = logger
        self._lock = threading.Lock()
        self._held: dict[str, Counter[str]] = {}
        self._last: dict[str, float] = {}

    def note(self, group: str, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        with self._lock:
            held = self._held.setdefault(group, Counter())
            held.update(_short(letter.reason) for letter in letters)
            now = self.clock()
            last = self._last.get(group)
            if last is not None and now - last < self.interval_s:
                return
            self._last[group] = now
            self._emit(group, self._held.pop(group))

    def flush(self) -> None:
        """Say what is still held back (at the end of a run)."""
        with self._lock:
            held, self._held = self._held, {}
            for group, reasons in held.items():
                self._emit(group, reasons)

    def _emit(self, group: str, reasons: Counter[str]) -> None:
        top = reasons.most_common(_LOG_REASONS)
        named = "; ".join(f"{count} x {reason!r}" for reason, count in top)
        others = len(reasons) - len(top)
        if others > 0:
            named += f"; and {others} other reason(s)"
        self.logger.warning(
            "group %s dead-lettered %d record(s) or entries: %s "
            "(see: fleettrace dlq list --group %s)",
            group,
            sum(reasons.values()),
            named,
            group,
        )


def _short(reason: str) -> str:
    return reason if len(reason) <= _LOG_REASON_CHARS else reason[:_LOG_REASON_CHARS] + "..."


#: The worker's one dead-letter log (group loops of one process share it).
DEAD_LETTER_LOG: Final = DeadLetterLog()


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
    if not keys.is_stream(letter.stream):
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
    client: redis.Redis,
    keys: Keys,
    group: str,
    ids: Sequence[str] | None = None,
    *,
    reason: str | None = None,
) -> ReplayReport:
    """Put dead letters of ``group`` back on their streams (all of them when ``ids`` is
    None, read in pages; only those whose reason contains ``reason`` when given). Each
    is deleted from the dead-letter stream only after its XADD succeeded; a crash in
    between replays it again under the same batch id, which stores once."""
    dlq = keys.dead_letters(group)
    report = ReplayReport()
    letters: Iterator[tuple[str, DeadLetter]]
    if ids is None:
        # Up to the last dead letter now: one that a worker makes again from a replayed
        # record (its cause not fixed after all) waits for the next replay.
        with translate_redis_errors("reading dead letters"):
            last: Any = client.xrevrange(dlq, count=1)
        if not last:
            return report
        ms, _, seq = last[0][0].decode().partition("-")
        letters = iter_dead_letters(
            client, keys, group, reason=reason, before_id=f"{ms}-{int(seq) + 1}"
        )
    else:
        check_ids(ids)
        chosen = []
        with translate_redis_errors("reading dead letters"):
            for wanted in ids:
                rows: Any = client.xrange(dlq, min=wanted, max=wanted)
                if not rows:
                    report.missing.append(wanted)
                    continue
                letter = DeadLetter.from_fields(rows[0][1])
                if reason is None or reason in letter.reason:
                    chosen.append((wanted, letter))
        letters = iter(chosen)
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
