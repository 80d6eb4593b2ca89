"""One LLM call as an integration sees it, from the request to the record.

A :class:`Call` is made when a request starts: it takes the plan, decision and
actor from the ``contextvars`` scopes there (a stream may end in another context)
and notes an ``actor.llm(...)`` span open around it. The integration fills in what
the client reports; :meth:`Call.finish` then either fills that open span or records
an ``LLMTrace`` of its own, exactly once, however often it is called (a stream ends
by exhaustion, ``close()`` and garbage collection, in any order).

Nothing here raises into agent code: a value the record refuses is logged and the
call is dropped, never the caller's answer.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson

from fleettrace import attributes, plan_scope
from fleettrace.attributes import Attributes
from fleettrace.capture import SHAPES, build_llm, shape_of
from fleettrace.emitter import Emitter, hook_emitter
from fleettrace.ids import stamp_at
from fleettrace.llm_span import LLMCallSpan, current_llm_call
from fleettrace.model import (
    MAX_ERROR_CHARS,
    MAX_LATENCY_MS,
    MAX_NAME_CHARS,
    MAX_TOKENS,
    MAX_TOOL_CALLS,
)
from fleettrace.plan_scope import PlanState
from fleettrace.spans import ACTOR, DECISION_ID, PLAN_ID

logger = logging.getLogger("fleettrace.integrations")

#: What an integration calls with each finished call (see ``Call``), when given one.
CallObserver = Callable[["Call"], None]


def error_text(error: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, as the hooks record an exception."""
    return f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


def tokens(value: object) -> int | None:
    """A token count from a provider's usage, or None when it is not a sane count."""
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value
    return None


#: The parts of a request body that are the context sent to the model (chat
#: ``messages``, Responses ``instructions`` and ``input``, Anthropic ``system``).
CONTEXT_KEYS: Final = ("system", "instructions", "messages", "input")


def context_hash(body: object) -> str | None:
    """SHA-256 (hex) of the request's context: its ``CONTEXT_KEYS`` present, as JSON
    with sorted keys, so the same messages hash alike whatever the model or options;
    None when the body has none of them. Only the hash is kept, never the text."""
    if not isinstance(body, dict):
        return None
    context = {key: body[key] for key in CONTEXT_KEYS if key in body}
    if not context:
        return None
    data = orjson.dumps(context, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(data).hexdigest()


@dataclass(slots=True, eq=False)
class Call:
    """What is known of one LLM call so far.

    ``cache_read_tokens``, ``cache_write_tokens`` and ``reasoning_tokens`` are
    recorded beside the totals they are part of; ``ttft_ms`` (set by
    :meth:`first_token` at the stream's first chunk) is recorded as the record's, and
    the tags, metadata, user and session in force when the request started
    (``scope``) are those of the record. ``prompt_tokens`` is the whole input,
    cache reads and writes included; ``completion_tokens`` the whole output, reasoning
    included.
    """

    provider: str
    model: str
    emitter: Emitter | None = None
    observer: CallObserver | None = None
    streaming: bool = False
    retries: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    ttft_ms: float | None = None
    tool_calls: list[str] = field(default_factory=list)
    #: Set when the integration was asked to hash the request (``hash_context=True``).
    context_hash: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    #: Set by the integration when it asked the API for a usage chunk the caller did
    #: not ask for, so that chunk is hidden from the caller.
    hide_usage_chunk: bool = False
    # The context is read where the request starts (each a ContextVar's own ``get``:
    # this runs on every call an agent makes).
    plan_id: str | None = field(default_factory=PLAN_ID.get)
    decision_id: str | None = field(default_factory=DECISION_ID.get)
    actor: str | None = field(default_factory=ACTOR.get)
    span: LLMCallSpan | None = field(default_factory=current_llm_call)
    scope: Attributes = field(default_factory=attributes.current.get)
    #: The plan scope open where the request started: the record's place in its plan
    #: tree comes from it (on the sender's thread), as for a hook's record.
    plan_state: PlanState | None = field(default_factory=plan_scope.var().get)
    #: The call's place in its plan tree (root, its start, the plan's ancestors), when
    #: the integration knows it better than the context the call finishes in.
    place: dict[str, Any] | None = None
    #: When the call started, if the integration knows it better than ``started_wall_s``
    #: (a span's start time); None: ``started_wall_s``.
    started_at: datetime | None = None
    #: ``time.time()`` when the request started: a float, made into the record's
    #: ``started_at`` on the sender's thread.
    started_wall_s: float = field(default_factory=time.time)
    started_s: float = field(default_factory=time.perf_counter)
    finished: bool = False
    #: Where the call went: ``"span"`` (filled an open span), ``"record"``, or None.
    outcome: str | None = None
    _once: list[bool] = field(default_factory=lambda: [True])

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started_s) * 1000

    def add_tool_call(self, name: object) -> None:
        if isinstance(name, str) and name and len(self.tool_calls) < MAX_TOOL_CALLS:
            self.tool_calls.append(name[:MAX_NAME_CHARS])

    def set_model(self, model: object) -> None:
        if isinstance(model, str) and model:
            self.model = model[:MAX_NAME_CHARS]

    def finish(self, error: BaseException | None = None) -> None:
        """Record the call once; later calls do nothing. Never raises."""
        try:
            # list.pop is atomic: of two threads, or of a garbage-collection finalizer
            # running inside this very call, exactly one gets the token. (A lock could
            # deadlock when the finalizer runs in the thread that holds it.)
            self._once.pop()
        except IndexError:
            return
        self.finished = True
        try:
            if error is not None:
                self.error = error_text(error)
            if self.latency_ms is None:
                self.latency_ms = (time.perf_counter() - self.started_s) * 1000
            self._deliver()
        except Exception:
            logger.warning("fleettrace could not record an LLM call", exc_info=True)
        if self.observer is not None:
            try:
                self.observer(self)
            except Exception:
                logger.warning("an on_call observer of fleettrace failed", exc_info=True)

    def _fields(self) -> dict[str, Any]:
        # Usage the provider did not report stays None (unknown, unpriced), never 0.
        fields: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "streaming": self.streaming,
            "retry_count": self.retries,
            "tool_calls": list(self.tool_calls),
        }
        if self.ttft_ms is not None:
            fields["ttft_ms"] = min(self.ttft_ms, 86_400_000.0)
        if self.context_hash is not None:
            fields["context_hash"] = self.context_hash
        # A detail is kept only beside a known total it fits in (the record refuses a
        # detail larger than its total, and a refused record would lose the call).
        for name, detail, total in (
            ("cache_read_tokens", self.cache_read_tokens, self.prompt_tokens),
            ("cache_write_tokens", self.cache_write_tokens, self.prompt_tokens),
            ("reasoning_tokens", self.reasoning_tokens, self.completion_tokens),
        ):
            if detail is not None and total is not None and detail <= total:
                fields[name] = detail
        return fields

    def _deliver(self) -> None:
        span = self.span
        if span is not None and not span.ended:
            # The caller's own span is still open: it records this call when it ends,
            # with its own latency, so filling it is all there is to do.
            span.model = self.model
            span.update(**self._fields(), error=self.error)
            self.outcome = "span"
            return
        # Captured as a hook captures its call (fleettrace.capture): the caller's
        # thread makes one tuple; the sender thread builds, validates and prices the
        # record from it, and counts what it refuses.
        fields = self._fields()
        if self.place:
            fields.update(self.place)
        if self.started_at is not None:
            fields["started_at"] = self.started_at
        names = tuple(fields)
        captured = (
            build_llm,
            self.provider,
            self.model,
            SHAPES.get(names) or shape_of(names),
            min(self.latency_ms or 0.0, MAX_LATENCY_MS),
            self.error,
            self.plan_id,
            self.decision_id,
            self.actor,
            self.scope,
            self.plan_state,
            stamp_at(self.started_wall_s),
            *fields.values(),
        )
        hook_emitter(self.emitter).capture(captured)
        self.outcome = "record"


#: How many recently recorded keys ``first_claim`` remembers.
RECENT_KEYS: Final = 4096
_recent: OrderedDict[Hashable, None] = OrderedDict()
_recent_lock = threading.Lock()


def first_claim(key: Hashable) -> bool:
    """True the first time ``key`` (a LangChain run id, an OTel span id) is claimed.

    Two handlers or span processors installed side by side see the same run or span;
    only the first records it. The memory is bounded: the oldest keys are forgotten.
    """
    with _recent_lock:
        if key in _recent:
            return False
        _recent[key] = None
        if len(_recent) > RECENT_KEYS:
            _recent.popitem(last=False)
        return True


def guarded(what: str, func: Callable[..., Any], *args: Any) -> Any:
    """Run a piece of integration bookkeeping; log (not raise) what goes wrong."""
    try:
        return func(*args)
    except Exception:
        logger.debug("fleettrace integration: %s failed", what, exc_info=True)
        return None
