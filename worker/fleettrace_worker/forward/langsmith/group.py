"""The ``langsmith`` consumer group: every ``LLMTrace`` of the trace stream to LangSmith,
with the plan tree's tool calls and plan records (format version 3) as runs of their own.

A group of its own on the same streams as ``persist``, run by the same
:class:`~fleettrace_worker.stream.loop.GroupLoop` on a thread of its own, so a slow or
absent LangSmith never holds back persistence, and the other way round.

1. read      (``GroupLoop.take``)
2. map       (:meth:`ForwardLoop.prepare`: ``codec.decode_entry``, then
             :func:`~fleettrace_worker.forward.langsmith.runs.runs_for`)
3. send      (:meth:`ForwardLoop.deliver`: one ``POST /runs`` per run, through
             :class:`~fleettrace_worker.forward.langsmith.delivery.RunSender`, which raises unless
             LangSmith took the run: 2xx, or 409 for a run it already holds)
4. acknowledge (``GroupLoop.handle``, with this group's dead letters)

While LangSmith answers 429 or 5xx, times out or cannot be reached, ``deliver``
raises :class:`ForwardingDeferred` and the loop tries the batch again with capped
exponential backoff and jitter, never sooner than the server's Retry-After, keeping
the entries pending and in hand. Once LangSmith has failed without a break for
``retry_for_s`` (counted across batches, from the first failure after it last took
a run), each batch that still fails becomes dead letters at once, with the last
reason, so a long outage drains into the dead-letter stream instead of holding the
trace stream (``fleettrace dlq replay --group langsmith`` sends them again). 401
and 403 are about the API key, not the record: they are retried the same way but
never count towards ``retry_for_s`` and never make a dead letter, so a wrong key
holds the entries pending (the group says why, once, naming ``LANGSMITH_API_KEY``,
and reports not ready) until the key is fixed. A run refused with another 4xx makes
its record a dead letter at once, with LangSmith's answer.

Entries that do not decode and records that do not validate are dead letters of the
``persist`` group; this group acknowledges them without a copy of its own, so a bad
record is replayed from one place. Metric entries are acknowledged untouched.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, Protocol, TypeVar

from fleettrace.errors import ConfigurationError
from fleettrace_worker.errors import ForwardingDeferred, ForwardingRejected, ForwardingUnauthorized
from fleettrace_worker.forward.forwarding import (
    TREE_KINDS,
    ForwardingContext,
    TracePlace,
    forwarding_loop_settings,
    record_dead_letter,
    trace_records,
)
from fleettrace_worker.forward.langsmith.delivery import RunSender
from fleettrace_worker.forward.langsmith.runs import PLAN_RUN_TYPE, Run
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.forward.langsmith.tree_runs import PATCH, runs_for
from fleettrace_worker.forward.retrywindow import RetryWindow, RetryWindowOver
from fleettrace_worker.keys import LANGSMITH_GROUP
from fleettrace_worker.stream.consumer import Consumer, Entry
from fleettrace_worker.stream.deadletter import DeadLetter
from fleettrace_worker.stream.loop import GroupLoop, LoopSettings, Prepared

__all__ = ["ForwardLoop", "RetryWindowOver", "langsmith_loop", "loop_settings"]


#: Plan root runs LangSmith already took, remembered so each is posted about once.
ROOT_CACHE_SIZE: Final = 10_000
#: Records per batch: one HTTP request per run, so smaller batches than ``persist``
#: keep the entries in hand few and a batch short.
FORWARD_BATCH_RECORDS: Final = 200
#: Names of the threads that post runs (``close()`` ends them).
REQUEST_THREAD_PREFIX: Final = "fleettrace-langsmith"

#: Why a worker with forwarding on and no key does not start: every run would be
#: refused, and refusing them one by one would teach nothing.
MISSING_KEY_MESSAGE: Final = (
    "LangSmith forwarding is on but LANGSMITH_API_KEY is not set: set it, "
    "or turn forwarding off (LANGSMITH_TRACING=false)"
)

_T = TypeVar("_T")


@dataclass(slots=True)
class Outgoing(TracePlace):
    """One record on its way, and how far it got: a retried batch does not post
    again what LangSmith already took, nor loses a refusal it already heard."""

    runs: list[Run]
    sent: int = 0
    refusal: str | None = None
    done: bool = False


@dataclass(slots=True)
class Outbox:
    items: list[Outgoing] = field(default_factory=list)


def loop_settings(
    settings: LangSmithSettings, base: LoopSettings | None = None, *, burst: bool = False
) -> LoopSettings:
    """The group loop's settings for forwarding: those of ``base`` (the worker's), with
    LangSmith's backoff."""
    return forwarding_loop_settings(
        base if base is not None else LoopSettings(burst=burst),
        batch_records=FORWARD_BATCH_RECORDS,
        backoff_initial_s=settings.backoff_initial_s,
        backoff_max_s=settings.backoff_max_s,
    )


class _WithLangSmith(Protocol):
    @property
    def langsmith(self) -> LangSmithSettings: ...


class LangSmithContext(ForwardingContext, Protocol):
    """A forwarding context whose settings carry LangSmith's (the worker's do)."""

    @property
    def settings(self) -> _WithLangSmith: ...


def langsmith_loop(context: LangSmithContext) -> GroupLoop[Any]:
    """The ``langsmith`` group of a worker process, set up from the worker's settings
    (read from the ``LANGSMITH_*`` / ``LANGCHAIN_*`` environment at the edge)."""
    settings = context.settings.langsmith
    if not settings.enabled:
        raise ConfigurationError(
            "the langsmith group forwards only with LANGSMITH_TRACING=true "
            "or LANGCHAIN_TRACING_V2=true"
        )
    if settings.api_key is None:
        raise ConfigurationError(MISSING_KEY_MESSAGE)
    return ForwardLoop(
        context.consumer(LANGSMITH_GROUP),
        settings,
        loop=loop_settings(settings, context.loop_settings()),
    )


def _progress(payload: Outbox) -> int:
    return sum(item.sent + item.done for item in payload.items)


class ForwardLoop(GroupLoop[Outbox]):
    """One consumer of the ``langsmith`` group."""

    def __init__(
        self,
        consumer: Consumer,
        settings: LangSmithSettings,
        sender: RunSender | None = None,
        loop: LoopSettings | None = None,
    ) -> None:
        super().__init__(consumer, loop or loop_settings(settings))
        self.langsmith = settings
        self.sender = sender if sender is not None else RunSender(settings)
        self._roots: OrderedDict[object, None] = OrderedDict()
        self._roots_lock = threading.Lock()
        self.window = RetryWindow("LangSmith", settings.retry_for_s)
        self._pool = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix=REQUEST_THREAD_PREFIX
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"ForwardLoop({self.consumer!r}, {self.langsmith!r})"

    def prepare(self, entries: Sequence[Entry]) -> Prepared[Outbox]:
        outbox = Outbox()
        for place, record in trace_records(entries, TREE_KINDS):
            outbox.items.append(
                Outgoing(
                    place.entry,
                    place.batch_id,
                    place.position,
                    place.raw,
                    place.kind,
                    runs_for(record, self.langsmith.project),
                )
            )
        return Prepared(outbox, len(outbox.items), [])

    def deliver(self, payload: Outbox) -> list[DeadLetter]:
        """Send what is still unsent, ``concurrency`` records at a time (plan roots
        first, so no call is posted before the run it hangs under). A
        ``ForwardingDeferred`` leaves the rest for the next try, until LangSmith has
        failed without a break for ``retry_for_s``. Returns the dead letters of
        records LangSmith refused."""
        before = _progress(payload)
        waiting = [item for item in payload.items if not item.done]
        deferred = self._in_parallel(self._send_roots, self._roots_of(waiting))
        if deferred is None:
            deferred = self._in_parallel(self._send_item, waiting)
        if deferred is not None:
            self._fail(deferred, answered=_progress(payload) > before)
        self.window.succeeded()
        return [self._dead_letter(item) for item in payload.items if item.refusal is not None]

    def _fail(self, deferred: ForwardingDeferred, *, answered: bool) -> NoReturn:
        """Retry, or past ``retry_for_s`` give the batch up (the shared
        :class:`~fleettrace_worker.forward.retrywindow.RetryWindow`)."""
        self.window.fail(deferred, answered=answered)

    @property
    def clock(self) -> Callable[[], float]:
        return self.window.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.window.clock = clock

    def _in_parallel(
        self, send: Callable[[_T], None], work: Sequence[_T]
    ) -> ForwardingDeferred | None:
        """Run ``send`` over ``work``, ``concurrency`` at a time. After the first
        deferral no new request starts (LangSmith is busy or away; a batch's worth of
        failing requests would not help); the deferral asking for the longest wait is
        returned."""
        deferrals: list[ForwardingDeferred] = []
        lock = threading.Lock()

        def attempt(one: _T) -> None:
            if deferrals:
                return
            try:
                send(one)
            except ForwardingDeferred as deferred:
                with lock:
                    deferrals.append(deferred)

        if len(work) <= 1 or self.langsmith.concurrency == 1:
            for one in work:
                attempt(one)
        else:
            list(self._pool.map(attempt, work))
        if not deferrals:
            return None
        # A refused key says the most (nothing will pass until it is fixed), then the
        # longest wait a server asked for.
        return max(
            deferrals,
            key=lambda d: (isinstance(d, ForwardingUnauthorized), d.retry_after_s or 0.0),
        )

    def _roots_of(self, items: Sequence[Outgoing]) -> list[list[Outgoing]]:
        """The waiting items grouped by the plan root they need and LangSmith lacks."""
        by_root: dict[object, list[Outgoing]] = {}
        for item in items:
            if item.sent == 0 and len(item.runs) > 1 and not self._known_root(item.runs[0]):
                by_root.setdefault(item.runs[0]["id"], []).append(item)
        return list(by_root.values())

    def _send_roots(self, items: list[Outgoing]) -> None:
        root = items[0].runs[0]
        try:
            self.sender.send(root)
        except ForwardingRejected as error:
            # A call without its root would have nothing to hang under.
            for item in items:
                item.refusal = str(error)
                item.done = True
            return
        self._remember_root(root)

    def _send_item(self, item: Outgoing) -> None:
        if item.done:
            return
        for index in range(item.sent, len(item.runs)):
            run = item.runs[index]
            if not self._known_root(run):
                try:
                    self.sender.send(run)
                except ForwardingRejected as error:
                    item.refusal = str(error)
                    item.done = True
                    return
                self._remember_root(run)
            item.sent = index + 1
        item.done = True

    def _dead_letter(self, item: Outgoing) -> DeadLetter:
        return record_dead_letter(
            item, self.consumer.name, f"LangSmith refused the record: {item.refusal}"
        )

    def _known_root(self, run: Run) -> bool:
        if run.get(PATCH):  # an update is sent each time: it carries what a create lacked
            return False
        with self._roots_lock:
            return run["run_type"] == PLAN_RUN_TYPE and run["id"] in self._roots

    def _remember_root(self, run: Run) -> None:
        if run["run_type"] != PLAN_RUN_TYPE or run.get(PATCH):
            return
        with self._roots_lock:
            self._roots[run["id"]] = None
            if len(self._roots) > ROOT_CACHE_SIZE:
                self._roots.popitem(last=False)

    def close(self) -> None:
        """Stop the request threads and close LangSmith's HTTP session; safe twice."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self.sender.close()
