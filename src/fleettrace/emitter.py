"""The emitter: takes records on the agent's hot path and sends them to Redis in batches.

``record()`` and ``observe()`` only put the record in a bounded in-memory buffer (a
deque append; the lock only when the buffer is full or bounded in bytes), and the
hooks put there what they captured (:meth:`Emitter.capture`, :mod:`fleettrace.capture`):
no validation of a hook's record, no encoding, no network, no pricing. A daemon
thread takes batches from the buffer, makes the records of what hooks captured,
prices the calls whose cost the caller
left out (:mod:`fleettrace.pricing`), encodes them (:mod:`fleettrace.codec`),
sums their counter deltas (:mod:`fleettrace.counters`) and applies each batch with
one function call (:mod:`fleettrace.batch_script`; a script on Redis 6.2), which
writes the stream entries and the counters atomically and applies a re-sent batch
only once. Every key it writes is under its producer's prefix ``{ns}:p:<producer>:``
(the Redis user it connects as, or ``EmitterSettings.producer``). A batch too
large for one stream entry goes as several calls (:mod:`fleettrace.batching`).

When Redis is down, slow or refusing (WRONGTYPE, NOPERM, out of memory), the batch
in hand is kept, with its sequence number, and retried with capped exponential
backoff and jitter; new records keep filling the buffer. Every failed call is
counted with its reason (``stats.send_failures``, ``stats.last_error``); the batch in
hand counts as buffered. The sender thread (:mod:`fleettrace.sending`) survives any
error of one iteration (it logs it and carries on), and ``record()``/``flush()``
start a new one if it died. When the buffer is full, ``overflow="drop_oldest"``
drops the oldest record and ``overflow="block"`` makes the caller wait up to
``block_timeout_s`` before the new record is dropped. Every dropped record is counted exactly
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
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Final

from fleettrace.capture import Captured
from fleettrace.emitter_settings import EmitterSettings, EmitterStats
from fleettrace.environment import redact_url
from fleettrace.errors import ConfigurationError, EmitterClosed
from fleettrace.keys import Keys
from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace, MetricSample
from fleettrace.price_overrides import load_prices
from fleettrace.pricing import Pricer
from fleettrace.sending import BatchSender
from fleettrace.tree_records import AnyRecord, PlanRecord, ToolCall

_RECORD_TYPES: Final = (LLMTrace, MetricSample, ToolCall, PlanRecord)
_logger = logging.getLogger("fleettrace.emitter")


class Emitter(BatchSender):
    """Sends ``LLMTrace`` records and metric samples to Redis without blocking the caller.

    ``record()`` is safe from any thread and from asyncio code (it never waits on the
    network); one emitter per process is the usual shape (see ``fleettrace.configure``).
    """

    def __init__(self, settings: EmitterSettings | None = None) -> None:
        self.settings = settings if settings is not None else EmitterSettings()
        self.keys = Keys(self.settings.namespace)  # its producer's, once known (_reset_state)
        self._closed = False
        self._finalizer_registered = False
        # Read once: a price file that does not load is refused here, in one line.
        path = self.settings.prices_file
        self.pricer = Pricer(load_prices(path) if path else None)
        # Attribute values a hook dropped, by reason (fleettrace.attributes), and the
        # reasons already logged: each is logged once per emitter, then only counted.
        self._rejected: dict[str, int] = {}
        self._rejections_logged: set[str] = set()
        self._reset_state()
        _live_emitters.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Emitter {state} {redact_url(self.settings.redis_url)} {self.keys.prefix}>"

    @property
    def emitter_id(self) -> str:
        """This emitter's random id: its idempotency key is ``keys.emitter_seq(id)``."""
        return self._emitter_id

    # -- hot path -------------------------------------------------------------------

    def record(self, trace: LLMTrace | MetricSample | ToolCall | PlanRecord) -> None:
        """Queue one trace (or a prebuilt metric sample, tool call or plan record) for
        sending. Costs a type check and a deque append (a lock when the buffer is
        full, or bounded in bytes)."""
        if not isinstance(trace, _RECORD_TYPES):
            raise TypeError(
                "record() takes an LLMTrace, MetricSample, ToolCall or PlanRecord, "
                f"not {type(trace).__name__}"
            )
        self.capture(trace)

    def capture(self, *items: AnyRecord | Captured) -> None:
        """Queue records, or what a hook captured (:mod:`fleettrace.capture`: the
        sender thread makes the record of it). The hooks' way in, unchecked (the hooks
        make the items).

        An item is appended without the lock while the buffer has room (a deque
        append is atomic, and every removal from the buffer happens under the lock
        and counts what it removed, so the figures still add up) and, with a byte
        bound, while the buffer holds only captured tuples; anything else goes the
        locked way of :meth:`_put`. Several threads at the bound may each add one
        record past it before one of them takes the locked way."""
        if not self._sender_running:
            self._start_sender()
        if self._closed:
            raise EmitterClosed(
                "this emitter is closed; create a new one or use fleettrace.get_emitter()"
            )
        buffer = self._buffer
        before = len(buffer)
        for item in items:
            if len(buffer) < self._max_buffer and not (
                self._byte_bound and (self._models_buffered or type(item) is not tuple)
            ):
                buffer.append(item)
            else:
                self._put(item)
        if self._sender_idle:
            # An idle sender sleeps without a timeout; the first record starts its
            # flush interval. (Checked first: setting an Event costs a microsecond.)
            self._sender_idle = False
            self._arrived.set()
        elif before < self._max_batch <= len(buffer):
            self._wake_sender()

    def capture_one(self, item: Captured) -> None:
        """:meth:`capture` of one item, the hooks' usual case: the checks of the
        unlocked append in one condition, and no tuple of arguments made. Anything
        else (no sender yet, closed, a byte bound, a full buffer) goes through
        :meth:`capture`."""
        buffer = self._buffer
        before = len(buffer)
        if (
            before < self._max_buffer
            and self._sender_running
            and not self._closed
            and not self._byte_bound
        ):
            buffer.append(item)
            if self._sender_idle:
                self._sender_idle = False
                self._arrived.set()
            elif before < self._max_batch <= len(buffer):
                self._wake_sender()
        else:
            self.capture(item)

    def _put(self, item: AnyRecord | Captured) -> None:
        """Append one item under the lock, applying the bounds and the overflow policy."""
        with self._lock:
            if self._closed:
                raise EmitterClosed(
                    "this emitter is closed; create a new one or use fleettrace.get_emitter()"
                )
            # Prebuilt records are counted only where a byte bound needs their size.
            model = self._byte_bound and type(item) is not tuple
            if model:
                self._models_buffered += 1
            if (
                len(self._buffer) >= self._max_buffer or (self._byte_bound and self._over_bytes())
            ) and not self._make_room():
                if model:
                    self._models_buffered -= 1
                return
            self._buffer.append(item)

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
        False means the new record was dropped (and counted as accepted and dropped at
        once, so the figures add up whenever the lock is free: the wait releases it)."""
        if self.settings.overflow == "drop_oldest":
            # Oldest first until the new record fits both bounds (one, unless the byte
            # bound needs room for a record larger than the one it drops).
            buffer = self._buffer
            dropped = 0
            while buffer and (
                dropped == 0 or len(buffer) >= self._max_buffer or self._over_bytes()
            ):
                dropping = buffer.popleft()
                if self._byte_bound and type(dropping) is not tuple:
                    self._models_buffered -= 1
                dropped += 1
            self._removed += dropped
            self._done += dropped
            self._count_dropped(dropped)
            return True
        self._wake_sender()
        limit = self._max_buffer
        if self._room.wait_for(
            lambda: len(self._buffer) < limit and not self._over_bytes(),
            self.settings.block_timeout_s,
        ):
            return True
        self._refused += 1
        self._done += 1
        self._count_dropped(1)
        return False

    # -- lifecycle --------------------------------------------------------------------

    def reject(self, reasons: list[str], where: str) -> None:
        """Count attribute values a hook dropped (``stats.rejected``), logging each
        reason the first time it is seen. Never raises: it runs inside hooks."""
        if not reasons:
            return
        first: list[str] = []
        with self._lock:
            for reason in reasons:
                self._rejected[reason] = self._rejected.get(reason, 0) + 1
                if reason not in self._rejections_logged:
                    self._rejections_logged.add(reason)
                    first.append(reason)
        for reason in first:
            _logger.warning(
                "fleettrace dropped an invalid attribute value (%s) given to %s; "
                "further ones are only counted in Emitter.stats.rejected",
                reason,
                where,
            )

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> EmitterStats:
        with self._lock:
            waiting = len(self._buffer)
            return EmitterStats(
                accepted=self._accepted(waiting),
                sent=self._sent,
                dropped=self._dropped,
                batches=self._batches,
                buffered=waiting + self._in_hand,
                send_failures=self._send_failures,
                last_error=self._last_error,
                rejected=dict(self._rejected),
            )

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record accepted before this call is in Redis (or was dropped).

        Returns False when that did not happen within ``timeout_s``.
        """
        with self._lock:
            target = self._accepted(len(self._buffer))
            if self._done >= target and not self._dropped_unreported:
                return True
        if not self._sender_running:
            self._start_sender()
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
            popleft = self._buffer.popleft
            for _ in range(left):  # not clear(): a hook may be appending meanwhile
                popleft()
            self._removed += left
            self._models_buffered = 0
            if left:
                self._done += left
                self._count_dropped(left, "closed before Redis took them")
        self._stop.set()
        self._wake_sender()
        sender = self._sender
        if sender is not None and sender is not threading.current_thread():
            sender.join(max(timeout_s, 0.1))
        if sender is None or not sender.is_alive():
            self._give_up_in_hand()  # a sender that died left its batch: count it
        self._client.close()
        return flushed and not left

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start_sender(self) -> None:
        """Start the sender thread, or a new one when the last one died."""
        with self._lock:
            if self._sender_running or self._closed:
                return
            self._sender_running = True
            self._sender = threading.Thread(
                target=self._run, name="fleettrace-emitter", daemon=True
            )
            self._sender.start()
            if self._finalizer_registered:
                return
            self._finalizer_registered = True
        # multiprocessing children end with os._exit() (no atexit) after running their
        # finalizers: drain there too.
        import multiprocessing.util  # noqa: PLC0415 (only needed once a sender runs)

        multiprocessing.util.Finalize(self, _close_at_exit, (weakref.ref(self),), exitpriority=100)

    # -- fork -------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        self._reset_state()
        # A multiprocessing child starts with no finalizers: register the drain again.
        self._finalizer_registered = False


def _close_at_exit(ref: weakref.ref[Emitter]) -> None:
    emitter = ref()
    if emitter is not None:
        emitter.close(emitter.settings.exit_timeout_s)


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


class UnconfiguredEmitter(Emitter):
    """What a hook records into while the environment names a bad setting: nothing.

    ``get_emitter()`` and ``configure()`` raise the setting's one-line
    ``ConfigurationError``; a hook must not (it runs inside agent code), so it gets
    this instead: the error is logged once, and every record a hook hands it is
    counted in :attr:`unrecorded` and dropped. A process whose environment is fixed
    and that calls ``configure()`` (or is restarted) records again."""

    def __init__(self, error: ConfigurationError) -> None:
        self.error = error
        self.unrecorded = 0
        self._count_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return False

    def _drop(self, count: int) -> None:
        with self._count_lock:
            self.unrecorded += count

    def record(self, trace: LLMTrace | MetricSample | ToolCall | PlanRecord) -> None:
        self._drop(1)

    def capture(self, *items: AnyRecord | Captured) -> None:
        self._drop(len(items))

    def capture_one(self, item: Captured) -> None:
        self._drop(1)

    def observe(
        self,
        key: MetricKey | str,
        value: float,
        labels: Mapping[str, str] | None = None,
        *,
        plan_id: str | None = None,
    ) -> None:
        self._drop(1)

    def reject(self, reasons: list[str], where: str) -> None:
        return None

    def flush(self, timeout_s: float | None = None) -> bool:
        return True

    def close(self, timeout_s: float | None = None) -> bool:
        return True

    def __repr__(self) -> str:
        return f"UnconfiguredEmitter({str(self.error)!r}, unrecorded={self.unrecorded})"


_unconfigured: UnconfiguredEmitter | None = None


def hook_emitter(given: Emitter | None = None) -> Emitter:
    """The emitter a hook records into: ``given``, else the default one; when the
    environment names a bad setting, an :class:`UnconfiguredEmitter` that counts and
    drops, with the setting's one-line error logged once. Never raises."""
    global _unconfigured  # noqa: PLW0603 (one per process, like the default emitter)
    if given is not None:
        return given
    current = _default
    if current is not None and not current._closed:
        return current
    try:
        return get_emitter()
    except ConfigurationError as error:
        current = _unconfigured
        if current is None or str(current.error) != str(error):
            current = _unconfigured = UnconfiguredEmitter(error)
            _logger.error("fleettrace records nothing until this is fixed: %s", error)
        return current


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
