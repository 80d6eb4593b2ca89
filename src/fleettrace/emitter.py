"""The emitter: takes records on the agent's hot path and sends them to Redis in batches.

``record()`` and ``observe()`` only put the record in a bounded in-memory buffer
(a lock, a deque append and a counter): no encoding, no network, no pricing. A
daemon thread takes batches from the buffer, encodes them (:mod:`fleettrace.codec`),
sums their counter deltas (:mod:`fleettrace.counters`) and applies each batch with
one script call (:mod:`fleettrace.batch_script`), which writes the stream entries
and the counters atomically and applies a re-sent batch only once.

When Redis is down, slow or refusing, the batch in hand is kept, with its batch id,
and retried with capped exponential backoff and jitter; new records keep filling
the buffer. When the buffer is full, ``overflow="drop_oldest"`` drops the oldest
record and ``overflow="block"`` makes the caller wait up to ``block_timeout_s``
before the new record is dropped. Every dropped record is counted exactly
(``Emitter.stats.dropped``), logged (rate-limited) and added to the ``dropped``
field of the namespace's emitter hash once Redis answers again.

Agent code never sees a Redis error. Two things do raise at the call, because they
are the caller's bug: an invalid ``observe()`` (unknown metric key, wrong labels,
negative counter value: pydantic's ``ValidationError``) and a record given to an
emitter after ``close()`` (:class:`~fleettrace.errors.EmitterClosed`).

Lifecycle: open from construction (the thread starts with the first record), closed
after ``close()``. Pending records are drained at interpreter exit, at the end of a
``multiprocessing`` child, and by ``flush()``/``close()``. After ``fork()`` the
child starts with an empty buffer, a new lock and a new connection; the parent
keeps sending what it had.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

import orjson
import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from fleettrace.batch_script import APPLY_BATCH_LUA, BatchCall, build_call
from fleettrace.codec import Kind, encode_batch, encode_record, new_batch_id
from fleettrace.connection import (
    DEFAULT_REDIS_URL,
    connect_redis,
    redact_url,
    redis_url_from_env,
)
from fleettrace.counters import aggregate
from fleettrace.errors import ConfigurationError, EmitterClosed
from fleettrace.keys import DEFAULT_NAMESPACE, NAMESPACE_VARIABLE, PLAN_TTL_S, Keys
from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace, MetricSample

logger = logging.getLogger("fleettrace.emitter")

#: At most one warning about dropped records or a failing Redis per this many seconds.
WARNING_INTERVAL_S: Final = 10.0

_RECORD_TYPES: Final = (LLMTrace, MetricSample)
_BUFFER_FULL: Final = "buffer full: Redis is unreachable or slower than the records come"

Overflow = Literal["drop_oldest", "block"]
_OVERFLOW_POLICIES: Final = ("drop_oldest", "block")


@dataclass(frozen=True, slots=True, repr=False)
class EmitterSettings:
    """How an emitter connects, batches, buffers and retries.

    The repr hides the password of ``redis_url``, so settings can be logged.
    """

    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = DEFAULT_NAMESPACE
    #: Largest batch (one script call, at most one stream entry per kind).
    max_batch_records: int = 1000
    #: A partial batch is sent after at most this long. Short, because it is the floor
    #: of every record's freshness; under load batches fill to ``max_batch_records``
    #: before it runs out (docs/performance.md: 5 ms instead of 50 ms took the p50 of
    #: row committed - record created at 5,000 records/s from about 40 to 8 ms).
    flush_interval_s: float = 0.005
    #: Records held in memory while Redis is slow or away; beyond it ``overflow`` applies.
    max_buffer_records: int = 100_000
    overflow: Overflow = "drop_oldest"
    #: With ``overflow="block"``: how long a caller waits for room before its record drops.
    block_timeout_s: float = 0.1
    retry_initial_s: float = 0.05
    retry_max_s: float = 5.0
    socket_timeout_s: float = 5.0
    #: How long interpreter exit may wait for the buffer to drain.
    exit_timeout_s: float = 5.0
    #: A plan's live counters expire this many seconds after the last batch that
    #: wrote them (whole seconds: Redis EXPIRE).
    plan_ttl_s: int = PLAN_TTL_S

    def __post_init__(self) -> None:
        try:
            Keys(self.namespace)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        if self.overflow not in _OVERFLOW_POLICIES:
            raise ConfigurationError(
                f"overflow must be 'drop_oldest' or 'block', got {self.overflow!r}"
            )
        for name in ("max_batch_records", "max_buffer_records", "plan_ttl_s"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        for name in (
            "flush_interval_s",
            "block_timeout_s",
            "retry_initial_s",
            "retry_max_s",
            "socket_timeout_s",
            "exit_timeout_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )

    def __repr__(self) -> str:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["redis_url"] = redact_url(self.redis_url)
        shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
        return f"EmitterSettings({shown})"

    @classmethod
    def from_env(cls, **overrides: Any) -> EmitterSettings:
        """Settings whose URL and namespace default to ``FLEETTRACE_REDIS_URL`` (then
        ``REDIS_URL``) and ``FLEETTRACE_NAMESPACE``."""
        if overrides.get("redis_url") is None:
            overrides["redis_url"] = redis_url_from_env() or DEFAULT_REDIS_URL
        if overrides.get("namespace") is None:
            overrides["namespace"] = os.environ.get(NAMESPACE_VARIABLE) or DEFAULT_NAMESPACE
        try:
            return cls(**overrides)
        except TypeError as error:
            raise ConfigurationError(f"unknown emitter setting: {error}") from None


@dataclass(frozen=True, slots=True)
class EmitterStats:
    """A snapshot of what an emitter has done in this process."""

    accepted: int
    sent: int
    dropped: int
    batches: int
    buffered: int
    send_failures: int
    last_error: str | None


class Emitter:
    """Sends ``LLMTrace`` records and metric samples to Redis without blocking the caller.

    ``record()`` is safe from any thread and from asyncio code (it never waits on the
    network); one emitter per process is the usual shape (see ``fleettrace.configure``).
    """

    def __init__(self, settings: EmitterSettings | None = None) -> None:
        self.settings = settings if settings is not None else EmitterSettings()
        self.keys = Keys(self.settings.namespace)
        self._closed = False
        self._reset_state()
        _live_emitters.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Emitter {state} {redact_url(self.settings.redis_url)} {self.keys.prefix}>"

    def _reset_state(self) -> None:
        """Fresh lock, buffer, figures, connection and no thread (init and after fork)."""
        self._max_buffer = self.settings.max_buffer_records
        self._max_batch = self.settings.max_batch_records
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._room = threading.Condition(self._lock)
        self._done_changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._arrived = threading.Event()
        self._sender_idle = False
        self._buffer: deque[LLMTrace | MetricSample] = deque()
        self._accepted = 0
        self._done = 0
        self._sent = 0
        self._dropped = 0
        self._dropped_unreported = 0
        self._batches = 0
        self._send_failures = 0
        self._last_error: str | None = None
        self._last_drop_warning_at = -math.inf
        self._last_failure_warning_at = -math.inf
        self._stopping = False
        self._sender: threading.Thread | None = None
        self._client: redis.Redis = connect_redis(
            self.settings.redis_url, socket_timeout_s=self.settings.socket_timeout_s
        )
        # One attempt per call: the sender's own backoff (retry_initial_s..retry_max_s)
        # decides when to try again, not redis-py's built-in retries stacked under it.
        self._client.set_retry(Retry(NoBackoff(), 0))
        self._script: Script = self._client.register_script(APPLY_BATCH_LUA)

    # -- hot path -------------------------------------------------------------------

    def record(self, trace: LLMTrace | MetricSample) -> None:
        """Queue one trace (or a prebuilt metric sample) for sending. Costs a type check,
        a lock and a deque append."""
        if not isinstance(trace, _RECORD_TYPES):
            raise TypeError(
                f"record() takes an LLMTrace or a MetricSample, not {type(trace).__name__}"
            )
        if self._sender is None:
            self._start_sender()
        with self._lock:
            if self._closed:
                raise EmitterClosed(
                    "this emitter is closed; create a new one or use fleettrace.get_emitter()"
                )
            buffer = self._buffer
            if len(buffer) >= self._max_buffer and not self._make_room():
                return
            buffer.append(trace)
            self._accepted += 1
            size = len(buffer)
            if size == 1 and self._sender_idle:
                # An idle sender sleeps without a timeout; the first record starts its
                # flush interval. (Checked first: setting an Event costs a microsecond.)
                self._arrived.set()
            elif size == self._max_batch:
                self._wake_sender()

    def observe(
        self,
        key: MetricKey | str,
        value: float,
        labels: Mapping[str, str] | None = None,
        *,
        plan_id: str | None = None,
    ) -> None:
        """Queue one observation of a metric key. Raises ``ValidationError`` for a value
        or label set the key does not take."""
        sample = MetricSample(
            key=key, value=value, labels=dict(labels) if labels else {}, plan_id=plan_id
        )
        self.record(sample)

    def _make_room(self) -> bool:
        """Called with the lock held and the buffer full: apply the overflow policy.
        False means the new record is dropped."""
        if self.settings.overflow == "drop_oldest":
            self._buffer.popleft()
            self._done += 1
            self._count_dropped(1)
            return True
        self._wake_sender()
        limit = self.settings.max_buffer_records
        if self._room.wait_for(lambda: len(self._buffer) < limit, self.settings.block_timeout_s):
            return True
        self._count_dropped(1)
        return False

    def _count_dropped(self, count: int, why: str = _BUFFER_FULL, *, report: bool = True) -> None:
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

    # -- lifecycle --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> EmitterStats:
        with self._lock:
            return EmitterStats(
                accepted=self._accepted,
                sent=self._sent,
                dropped=self._dropped,
                batches=self._batches,
                buffered=len(self._buffer),
                send_failures=self._send_failures,
                last_error=self._last_error,
            )

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record accepted before this call is in Redis (or was dropped).

        Returns False when that did not happen within ``timeout_s``.
        """
        with self._lock:
            target = self._accepted
            if self._done >= target and not self._dropped_unreported:
                return True
        self._wake_sender()
        with self._lock:
            return self._done_changed.wait_for(
                lambda: self._done >= target and not self._dropped_unreported, timeout_s
            )

    def close(self, timeout_s: float = 5.0) -> bool:
        """Flush, then stop the sender. Safe to call twice. Records still unsent when
        ``timeout_s`` runs out are dropped and counted. Returns whether all were sent."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        _live_emitters.discard(self)
        flushed = self.flush(timeout_s)
        with self._lock:
            self._stopping = True
            left = len(self._buffer)
            self._buffer.clear()
            if left:
                self._done += left
                self._count_dropped(left, "closed before Redis took them")
        self._stop.set()
        self._wake_sender()
        sender = self._sender
        if sender is not None and sender is not threading.current_thread():
            sender.join(max(timeout_s, 0.1))
        self._client.close()
        return flushed and not left

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start_sender(self) -> None:
        with self._lock:
            if self._sender is not None or self._closed:
                return
            self._sender = threading.Thread(
                target=self._run, name="fleettrace-emitter", daemon=True
            )
            self._sender.start()
        # multiprocessing children end with os._exit() (no atexit) after running their
        # finalizers: drain there too.
        import multiprocessing.util  # noqa: PLC0415 (only needed once a sender runs)

        multiprocessing.util.Finalize(self, _close_at_exit, (weakref.ref(self),), exitpriority=100)

    # -- sender thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            if self._idle():
                # Nothing to send: sleep until a record, flush() or close() wakes us,
                # rather than waking every flush interval for nothing.
                self._arrived.wait()
                self._sender_idle = False
            self._arrived.clear()
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()
            # The first batch after a wake-up may be partial (the interval ran out or
            # flush() asked); further ones only full, so a steady trickle of records is
            # not sent as a stream of tiny batches.
            partial = True
            while (call := self._take_batch(partial)) is not None:
                partial = False
                if not self._send(call):
                    return

    def _wake_sender(self) -> None:
        """Send now: a full batch, a flush, a close, or a caller blocked for room."""
        self._wake.set()
        self._arrived.set()

    def _idle(self) -> bool:
        """Whether there is nothing to send; if so, record() will wake the sender."""
        with self._lock:
            self._sender_idle = not self._buffer and not self._dropped_unreported
            return self._sender_idle

    def _take_batch(self, partial: bool) -> BatchCall | None:
        limit = self._max_batch
        with self._lock:
            if self._stopping or (not self._buffer and not self._dropped_unreported):
                return None
            if not partial and len(self._buffer) < limit:
                return None
            if len(self._buffer) <= limit:
                taken = list(self._buffer)
                self._buffer.clear()
            else:
                popleft = self._buffer.popleft
                taken = [popleft() for _ in range(limit)]
            dropped = self._dropped_unreported
            self._dropped_unreported = 0
            self._room.notify_all()
        try:
            return self._encode(taken, dropped)
        except Exception:  # a bug here must not stop the sender for good
            with self._lock:
                self._done += len(taken)
                self._count_dropped(len(taken), "could not be encoded")
                self._dropped_unreported += dropped
                self._done_changed.notify_all()
                warn = self._failure_warning_due()
            if warn:
                logger.exception("fleettrace could not encode a batch of %d records", len(taken))
            return None

    def _encode(self, taken: list[LLMTrace | MetricSample], dropped: int) -> BatchCall:
        traces = [r for r in taken if isinstance(r, LLMTrace)]
        samples = [r for r in taken if not isinstance(r, LLMTrace)]
        batch_id = new_batch_id()
        try:
            trace_entry = encode_batch(Kind.TRACE, traces, batch_id) if traces else None
            metric_entry = encode_batch(Kind.METRIC, samples, batch_id) if samples else None
        except orjson.JSONEncodeError:
            # A string pydantic accepts but JSON cannot carry (a lone surrogate): drop
            # just those records, counted, and send the rest.
            traces, samples = _encodable(traces), _encodable(samples)
            bad = len(taken) - len(traces) - len(samples)
            with self._lock:
                self._done += bad
                self._count_dropped(bad, "strings JSON cannot carry", report=False)
                dropped += bad
            return self._encode([*traces, *samples], dropped)
        return build_call(
            self.keys,
            batch_id,
            trace_entry=trace_entry,
            metric_entry=metric_entry,
            deltas=aggregate(traces, samples),
            records=len(traces) + len(samples),
            dropped=dropped,
            plan_ttl_s=self.settings.plan_ttl_s,
        )

    def _send(self, call: BatchCall) -> bool:
        """Apply one batch, retrying until it is applied. False when told to stop."""
        attempt = 0
        while True:
            try:
                self._script(keys=call.keys, args=call.args, client=self._client)
            except (redis.RedisError, OSError) as error:
                attempt += 1
                self._note_failure(error)
                delay = min(
                    self.settings.retry_max_s, self.settings.retry_initial_s * 2 ** min(attempt, 30)
                )
                if self._stop.wait(random.uniform(delay / 2, delay)):
                    self._give_up(call)
                    return False
                continue
            with self._lock:
                self._done += call.records
                self._sent += call.records
                self._batches += call.records > 0  # a batch may carry only drop counts
                self._done_changed.notify_all()
            return True

    def _give_up(self, call: BatchCall) -> None:
        with self._lock:
            self._done += call.records
            self._count_dropped(call.records, "closed before Redis took them")
            self._dropped_unreported += call.dropped
            self._done_changed.notify_all()

    def _note_failure(self, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        with self._lock:
            self._send_failures += 1
            self._last_error = message
            warn = self._failure_warning_due()
        if warn:
            logger.warning(
                "fleettrace cannot write to Redis at %s (%s); retrying with backoff, "
                "%d records buffered",
                redact_url(self.settings.redis_url),
                message,
                len(self._buffer),
            )

    def _failure_warning_due(self) -> bool:
        """Rate limit of the warnings about failures (lock held)."""
        now = time.monotonic()
        if now - self._last_failure_warning_at < WARNING_INTERVAL_S:
            return False
        self._last_failure_warning_at = now
        return True

    # -- fork -------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        self._reset_state()


def _close_at_exit(ref: weakref.ref[Emitter]) -> None:
    emitter = ref()
    if emitter is not None:
        emitter.close(emitter.settings.exit_timeout_s)


def _encodable(records: list[Any]) -> list[Any]:
    good = []
    for record in records:
        try:
            encode_record(record)
        except orjson.JSONEncodeError:
            continue
        good.append(record)
    return good


# -- process-wide state ---------------------------------------------------------------

_live_emitters: weakref.WeakSet[Emitter] = weakref.WeakSet()
_default: Emitter | None = None
_default_lock = threading.Lock()


def configure(
    redis_url: str | None = None, namespace: str | None = None, **settings: Any
) -> Emitter:
    """Make the process's default emitter (used by the hooks) and return it.

    URL and namespace default to ``FLEETTRACE_REDIS_URL`` / ``REDIS_URL`` and
    ``FLEETTRACE_NAMESPACE``; other keyword arguments are :class:`EmitterSettings`
    fields. A previous default emitter is closed (and so flushed) first.
    """
    global _default
    new = Emitter(EmitterSettings.from_env(redis_url=redis_url, namespace=namespace, **settings))
    with _default_lock:
        old, _default = _default, new
    if old is not None:
        old.close()
    return new


def get_emitter() -> Emitter:
    """The default emitter, made from the environment on first use."""
    global _default  # noqa: PLW0603 (one default emitter per process, by design)
    current = _default
    if current is not None and not current.closed:
        return current
    with _default_lock:
        if _default is None or _default.closed:
            _default = Emitter(EmitterSettings.from_env())
        return _default


def _after_fork_in_child() -> None:
    global _default_lock  # noqa: PLW0603 (a lock copied by fork may be held)
    _default_lock = threading.Lock()
    for emitter in list(_live_emitters):
        emitter._after_fork_in_child()


def _drain_at_exit() -> None:
    for emitter in list(_live_emitters):
        emitter.close(emitter.settings.exit_timeout_s)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_drain_at_exit)

__all__ = [
    "Emitter",
    "EmitterSettings",
    "EmitterStats",
    "configure",
    "get_emitter",
]
