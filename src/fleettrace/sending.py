"""The sender half of an emitter: the state it shares with the hot path and the
background thread that turns buffered records into script calls and applies them.

:class:`BatchSender` holds the buffer, the batch in hand and the figures;
:class:`fleettrace.emitter.Emitter` adds the hot path (``record()``) and the
lifecycle (``flush()``, ``close()``, fork and exit) on top of it.

The batch in hand is the records the sender took from the buffer, then the calls
they became (:mod:`fleettrace.batching`); it is sent in order, each call retried
until it is applied or the emitter closes, and it counts as buffered meanwhile.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from fleettrace.batch_script import APPLY_BATCH_LUA, FUNCTION_MISSING, BatchCall
from fleettrace.batching import encode_calls
from fleettrace.capture import Captured
from fleettrace.connection import connect_redis, tls_file_problem
from fleettrace.emitter_settings import CAPTURED_RECORD_BYTES, EmitterSettings, buffer_bytes
from fleettrace.environment import redact_url
from fleettrace.keys import APPLY_FUNCTION, DEFAULT_PRODUCER, Keys, check_producer
from fleettrace.pricing import Pricer
from fleettrace.redis_errors import handshake_hint
from fleettrace.tree_records import AnyRecord

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

logger = logging.getLogger("fleettrace.emitter")

#: At most one warning about dropped records or a failing Redis per this many seconds.
WARNING_INTERVAL_S: Final = 10.0

BUFFER_FULL: Final = "buffer full: Redis is unreachable or slower than the records come"


class LibraryMissing(Exception):
    """The server has functions but not the fleettrace library: nothing was written."""

    def __init__(self) -> None:
        super().__init__(
            f"the Redis function {APPLY_FUNCTION} is not loaded on this server; "
            "`fleettrace migrate` and every worker load it (records wait in the buffer)"
        )


class BadProducer(Exception):
    """The producer identity cannot name keys (an ACL user with unsafe characters)."""


class BatchSender:
    """Buffer, batch in hand, figures and the sender thread's loop of an emitter."""

    settings: EmitterSettings
    keys: Keys
    pricer: Pricer

    def _reset_state(self) -> None:
        """Fresh lock, buffer, figures, connection, id and no thread (init and after
        fork: a forked child numbers its batches under an id of its own)."""
        # The byte bound, where set, as records of the size a hook captures; prebuilt
        # models (record()) count as larger (buffer_bytes).
        byte_bound = self.settings.max_buffer_bytes
        self._byte_bound = byte_bound is not None
        self._max_bytes = byte_bound if byte_bound is not None else sys.maxsize
        self._max_buffer = min(
            self.settings.max_buffer_records, self._max_bytes // CAPTURED_RECORD_BYTES
        )
        self._models_buffered = 0
        self._max_batch = self.settings.max_batch_records
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._room = threading.Condition(self._lock)
        self._done_changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._arrived = threading.Event()
        self._sender_idle = False
        self._sender_running = False
        self._buffer: deque[AnyRecord | Captured] = deque()
        # The batch in hand: records taken from the buffer and not yet encoded, then
        # the calls they became, sent in order; ``_in_hand`` counts their records.
        self._hand: list[AnyRecord | Captured] = []
        self._hand_dropped = 0
        self._calls: deque[BatchCall] = deque()
        self._in_hand = 0
        self._emitter_id = secrets.token_hex(8)
        self._seq = 0
        # Accepted records are those that left the buffer, those in it, and those the
        # block policy refused at the door (see _accepted): hooks append without the
        # lock, so they count nothing themselves.
        self._removed = 0
        self._refused = 0
        self._done = 0
        self._sent = 0
        self._dropped = 0
        self._dropped_unreported = 0
        self._batches = 0
        self._send_failures = 0
        self._last_error: str | None = None
        self._last_drop_warning_at = -math.inf
        self._last_failure_warning_at = -math.inf
        self._last_unexpected_warning_at = -math.inf
        self._stopping = False
        self._sender: threading.Thread | None = None
        # The producer identity names every key the emitter writes: the configured one,
        # else the Redis user it connects as (ACL WHOAMI), learnt before the first batch.
        producer = self.settings.producer
        self.keys = Keys(
            self.settings.namespace, producer or DEFAULT_PRODUCER, self.settings.chosen_shard()
        )
        self._identified = producer is not None
        # FCALL of the function library until the server says it has no functions
        # (Redis 6.2), then the same body as an EVALSHA script.
        self._use_script = False
        # redis-py loads here, with the first emitter, not with `import fleettrace`.
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        from fleettrace.cluster import ReplicatedWrites  # noqa: PLC0415 - imports redis-py

        self._client: redis.Redis = connect_redis(
            self.settings.redis_url,
            socket_timeout_s=self.settings.socket_timeout_s,
            check_files=False,  # a TLS file that cannot serve is each send's failure
            cluster=self.settings.redis_cluster,
        )
        self._tls_problem = tls_file_problem(self.settings.redis_url)
        # One attempt per call: the sender's own backoff (retry_initial_s..retry_max_s)
        # decides when to try again, not redis-py's built-in retries stacked under it.
        self._client.set_retry(Retry(NoBackoff(), 0))
        self._script: Script = self._client.register_script(APPLY_BATCH_LUA)
        # Each call, then WAIT for replicas when asked (on a cluster with replicas by
        # default): a batch counts as sent once a replica holds it too.
        self._writes = ReplicatedWrites(
            self._client, self.keys.emitter, self.settings.replica_wait()
        )

    def _accepted(self, waiting: int) -> int:
        """Records accepted so far, with ``waiting`` in the buffer (lock held)."""
        return self._removed + waiting + self._refused

    def _over_bytes(self) -> bool:
        """Whether one more record would take the buffer's estimated size past its byte
        bound (lock held; a prebuilt record coming in is already in the count)."""
        return buffer_bytes(len(self._buffer) + 1, self._models_buffered) > self._max_bytes

    def _count_dropped(self, count: int, why: str = BUFFER_FULL, *, report: bool = True) -> None:
        """Count dropped records (lock held); ``report`` queues them for the emitter hash."""
        self._dropped += count
        if report:
            self._dropped_unreported += count
        now = time.monotonic()
        if now - self._last_drop_warning_at >= WARNING_INTERVAL_S:
            self._last_drop_warning_at = now
            logger.warning(
                "fleettrace dropped %d records (%s); %d dropped so far; Redis at %s, "
                "last error: %s",
                count,
                why,
                self._dropped,
                redact_url(self.settings.redis_url),
                self._last_error or "none",
            )

    # -- sender thread ----------------------------------------------------------------

    def _run(self) -> None:
        """The sender: one guarded cycle after another until close().

        Any exception of a cycle is logged (rate-limited) and the loop goes on with the
        batch in hand: a thread that sends telemetry must outlive a bug in one batch.
        Should the thread end anyway (a BaseException), it says so and the next
        ``record()`` or ``flush()`` starts another, which picks up the batch in hand.
        """
        try:
            while not self._stopping:
                try:
                    if not self._cycle():
                        return
                except Exception as error:  # noqa: BLE001 (the sender must not die)
                    self._note_unexpected(error)
                    self._stop.wait(self.settings.retry_initial_s)
        finally:
            with self._lock:
                self._sender_running = False
            if self._stopping:
                self._give_up_in_hand()

    def _cycle(self) -> bool:
        """Wait for work, then send the batch in hand and batches from the buffer.
        False when told to stop."""
        if not self._holding() and self._idle():
            # Nothing to send: sleep until a record, flush() or close() wakes us,
            # rather than waking every flush interval for nothing. Looked at again
            # once idle is set: a hook appends without the lock, and one that did
            # so just before saw the sender busy and woke no one.
            if not self._buffer:
                self._arrived.wait()
            self._sender_idle = False
        self._arrived.clear()
        if not self._holding():
            self._wake.wait(self.settings.flush_interval_s)
        self._wake.clear()
        # The first batch after a wake-up may be partial (the interval ran out or
        # flush() asked); further ones only full, so a steady trickle of records is
        # not sent as a stream of tiny batches.
        partial = True
        while True:
            if not self._calls:
                if not self._hand and not self._take(partial):
                    return True
                partial = False
                if not self._identified and not self._retrying(self._identify):
                    return False
                self._encode_hand()
                continue
            if not self._send(self._calls[0]):
                return False

    def _holding(self) -> bool:
        """Whether a batch is in hand (read by the sender thread, which alone sets it)."""
        return bool(self._calls or self._hand)

    def _wake_sender(self) -> None:
        """Send now: a full batch, a flush, a close, or a caller blocked for room."""
        self._wake.set()
        self._arrived.set()

    def _idle(self) -> bool:
        """Whether there is nothing to send; if so, record() will wake the sender."""
        with self._lock:
            self._sender_idle = not self._buffer and not self._dropped_unreported
            return self._sender_idle

    def _take(self, partial: bool) -> bool:
        """Move the next batch from the buffer into the hand. False: nothing to take."""
        limit = self._max_batch
        with self._lock:
            if self._stopping or (not self._buffer and not self._dropped_unreported):
                return False
            if not partial and len(self._buffer) < limit:
                return False
            # Popped one by one, never cleared: a hook may append meanwhile.
            popleft = self._buffer.popleft
            taken = [popleft() for _ in range(min(len(self._buffer), limit))]
            self._removed += len(taken)
            if self._models_buffered:
                self._models_buffered -= sum(type(item) is not tuple for item in taken)
            self._hand = taken
            self._hand_dropped = self._dropped_unreported
            self._in_hand += len(taken)
            self._dropped_unreported = 0
            self._room.notify_all()
        return True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _identify(self) -> None:
        """Learn the producer identity from the Redis user (``ACL WHOAMI``; ``default``
        without ACLs). Raises when Redis is away or the user name cannot name keys
        (:class:`BadProducer`): counted as a failed send and retried, records wait."""
        user = self._client.acl_whoami()
        name = user.decode(errors="replace") if isinstance(user, bytes) else str(user)
        try:
            check_producer(name)
        except ValueError as error:
            raise BadProducer(str(error)) from None
        self.keys = self.keys.for_producer(name)
        self._identified = True

    def _encode(self, records: list[AnyRecord | Captured], dropped: int = 0) -> list[BatchCall]:
        """The calls for ``records`` under this emitter's next numbers (for tests and
        benchmarks that apply calls themselves)."""
        if not self._identified:
            self._identify()
        built, unbuilt = self._build(records)
        return encode_calls(
            self.keys,
            self._emitter_id,
            self._next_seq,
            self.pricer.price_records(built),
            dropped + unbuilt,
            plan_ttl_s=self.settings.plan_ttl_s,
        ).calls

    def _encode_hand(self) -> None:
        """Turn the records in hand into calls. A batch that cannot be encoded (a bug)
        is dropped, counted, and the sender goes on."""
        taken, dropped = self._hand, self._hand_dropped
        try:
            # Made, validated and priced here, on the sender thread, before the
            # counters are summed: the caller's thread only captured what it knew.
            built, unbuilt = self._build(taken)
            encoded = encode_calls(
                self.keys,
                self._emitter_id,
                self._next_seq,
                self.pricer.price_records(built),
                dropped + unbuilt,
                plan_ttl_s=self.settings.plan_ttl_s,
            )
        except Exception:  # a bug here must not stop the sender for good
            with self._lock:
                self._hand, self._hand_dropped = [], 0
                self._in_hand -= len(taken)
                self._done += len(taken)
                self._count_dropped(len(taken), "could not be encoded")
                self._dropped_unreported += dropped
                self._done_changed.notify_all()
                warn = self._failure_warning_due()
            if warn:
                logger.exception("fleettrace could not encode a batch of %d records", len(taken))
            return
        with self._lock:
            self._hand, self._hand_dropped = [], 0
            self._calls.extend(encoded.calls)
            if unbuilt:
                # Captured by a hook, refused by the record (reported by the first call).
                self._in_hand -= unbuilt
                self._done += unbuilt
                self._count_dropped(unbuilt, "the record could not be made", report=False)
                self._done_changed.notify_all()
            if encoded.unencodable:
                # Strings pydantic accepts but JSON cannot carry (a lone surrogate):
                # those records are dropped, the rest sent; the first call reports them.
                self._in_hand -= encoded.unencodable
                self._done += encoded.unencodable
                self._count_dropped(encoded.unencodable, "strings JSON cannot carry", report=False)
                self._done_changed.notify_all()

    def _build(self, taken: list[AnyRecord | Captured]) -> tuple[list[AnyRecord], int]:
        """The records of what hooks captured (:mod:`fleettrace.capture`), prebuilt
        records as they are; and how many could not be made. Values left out are
        counted in ``stats.rejected``."""
        records: list[AnyRecord] = []
        rejected: list[str] = []
        unbuilt = 0
        for item in taken:
            if type(item) is not tuple:
                records.append(item)  # type: ignore[arg-type]
                continue
            record = item[0](item, rejected)  # the builder the hook put first
            if record is None:
                unbuilt += 1
            else:
                records.append(record)
        if rejected:
            self.reject(rejected, "an LLM call")
        return records, unbuilt

    def reject(self, reasons: list[str], where: str) -> None:
        """Count values a hook was given and the record could not hold (the emitter
        says how)."""
        raise NotImplementedError

    def _apply(self, call: BatchCall) -> None:
        """One attempt at applying ``call``: FCALL of the library's function, or the
        EVALSHA script where the server has no functions."""
        import redis  # noqa: PLC0415 - loaded with the client

        if not self._use_script:
            try:
                self._writes.write(
                    lambda client: client.fcall(
                        APPLY_FUNCTION, len(call.keys), *call.keys, *call.args
                    )
                )
                return
            except redis.ResponseError as error:
                text = str(error)
                if FUNCTION_MISSING.lower() in text.lower():
                    raise LibraryMissing from None
                if "unknown command" not in text.lower():
                    raise
                self._use_script = True  # Redis before 7: no functions, no ACL isolation
        self._writes.write(
            lambda client: self._script(keys=call.keys, args=call.args, client=client)
        )

    def _retrying(self, attempt_once: Callable[[], object]) -> bool:
        """``attempt_once()`` until it succeeds. False when told to stop. Every failure
        (Redis away, a refusal, the library missing, anything unexpected) is counted
        with its reason and retried with backoff; the buffer's policy decides what
        happens to the records that arrive meanwhile."""
        attempt = 0
        while True:
            try:
                attempt_once()
            except Exception as error:  # noqa: BLE001 (each failure is counted and retried)
                attempt += 1
                self._note_failure(error)
                delay = min(
                    self.settings.retry_max_s, self.settings.retry_initial_s * 2 ** min(attempt, 30)
                )
                if self._stop.wait(random.uniform(delay / 2, delay)):
                    return False
                continue
            return True

    def _send(self, call: BatchCall) -> bool:
        """Apply the first call in hand, retrying until it is applied. False when told
        to stop."""
        if not self._retrying(lambda: self._apply(call)):
            return False
        with self._lock:
            self._calls.popleft()
            self._in_hand -= call.records
            self._done += call.records
            self._sent += call.records
            self._batches += call.records > 0  # a batch may carry only drop counts
            self._done_changed.notify_all()
        return True

    def _give_up_in_hand(self) -> None:
        """Count the batch in hand as dropped (closing, or no sender left to send it)."""
        with self._lock:
            left = self._in_hand
            for call in self._calls:
                self._dropped_unreported += call.dropped
            self._dropped_unreported += self._hand_dropped
            self._calls.clear()
            self._hand, self._hand_dropped, self._in_hand = [], 0, 0
            if left:
                self._done += left
                self._count_dropped(left, "closed before Redis took them", report=False)
            self._done_changed.notify_all()

    def _note_failure(self, error: BaseException) -> None:
        import redis  # noqa: PLC0415 - loaded with the client

        if self._tls_problem is not None and isinstance(error, redis.ConnectionError):
            message = f"ConfigurationError: {self._tls_problem}"
        else:
            message = f"{type(error).__name__}: {error}{handshake_hint(error)}"
        with self._lock:
            self._send_failures += 1
            self._last_error = message
            warn = self._failure_warning_due()
            waiting = len(self._buffer) + self._in_hand
        if warn:
            logger.warning(
                "fleettrace cannot write to Redis at %s (%s); retrying with backoff, "
                "%d records buffered",
                redact_url(self.settings.redis_url),
                message,
                waiting,
            )

    def _note_unexpected(self, error: Exception) -> None:
        """An error the sender did not expect: remembered, logged with its traceback at
        most once per ``WARNING_INTERVAL_S``."""
        with self._lock:
            self._last_error = f"{type(error).__name__}: {error}"
            now = time.monotonic()
            warn = now - self._last_unexpected_warning_at >= WARNING_INTERVAL_S
            if warn:
                self._last_unexpected_warning_at = now
        if warn:
            logger.error(
                "fleettrace's sender hit an unexpected error and carries on: %s",
                self._last_error,
                exc_info=error,
            )

    def _failure_warning_due(self) -> bool:
        """Rate limit of the warnings about failures (lock held)."""
        now = time.monotonic()
        if now - self._last_failure_warning_at < WARNING_INTERVAL_S:
            return False
        self._last_failure_warning_at = now
        return True
