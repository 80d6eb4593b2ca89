"""The LLM call span: ``llm_call(...)`` / ``actor.llm(...)`` as a context manager
and decorator, and the context variable through which an integration finds the call
open in its context (:func:`current_llm_call`).

Kept apart from :mod:`fleettrace.hooks` (which re-exports both) because it is the
hook agent code runs on every LLM call, written for its cost: the block's end only
captures what the call knew into one tuple (:mod:`fleettrace.capture`); the emitter's
sender thread makes, validates, prices and encodes the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar, Token
from time import perf_counter, time_ns
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from fleettrace import emitter as _emitters
from fleettrace import ids as _ids
from fleettrace.attributes import current as _attributes
from fleettrace.capture import SHAPES, Captured, build_llm, shape_of
from fleettrace.emitter import Emitter, hook_emitter
from fleettrace.ids import COUNTER_MASK as _COUNTER_MASK
from fleettrace.ids import STAMP_SHIFT as _STAMP_SHIFT
from fleettrace.model import LLMTrace
from fleettrace.plan_scope import error_text as _error_text
from fleettrace.plan_scope import var as _plan_var
from fleettrace.spans import ACTOR, DECISION_ID, PLAN_ID, Span

logger = logging.getLogger("fleettrace.hooks")

P = ParamSpec("P")
R = TypeVar("R")

# The LLM call span open in this context: a wrapped client fills it (fleettrace.integrations)
# instead of recording a second call for the same request.
_llm_call: ContextVar[LLMCallSpan | None] = ContextVar("fleettrace_llm_call", default=None)


_plan_state = _plan_var()


def current_llm_call() -> LLMCallSpan | None:
    """The ``llm_call`` / ``actor.llm`` span open in this context, if any."""
    return _llm_call.get()


class LLMCallSpan(Span):
    """One LLM call, recorded as an ``LLMTrace`` when the block ends.

    Its latency is the block's wall time unless ``latency_ms`` is given; an exception
    sets ``error`` to ``"<ExceptionType>: <message>"``. Usage known only after the
    call (tokens, retries, cost) is set inside the block with :meth:`update`.

    The block's end only captures what the call knew (:mod:`fleettrace.capture`); the
    emitter's sender thread makes, validates, prices and encodes the record. A value
    the record cannot hold is left out and counted in ``Emitter.stats.rejected``,
    never raised. :attr:`trace` is the record (made when first asked for, from what
    was captured: the record sent, but for its cost).
    """

    # Slots (beside Span's): one allocation per span instead of two (an object and
    # its values).
    __slots__ = (
        "_actor",
        "_captured",
        "_own_fields",
        "_reset",
        "_trace",
        "fields",
        "model",
        "provider",
    )

    def __init__(
        self,
        provider: str,
        model: str,
        fields: dict[str, Any],
        emitter: Emitter | None,
        actor: str | None = None,
    ) -> None:
        self._emitter = emitter
        self.provider = provider
        self.model = model
        #: The fields set so far; this span's own dict (a kwargs dict made for it)
        #: until it decorates a function, whose calls each copy it (see __enter__).
        self.fields = fields
        #: The actor of ``actor.llm(...)``: the call's, whatever the context says
        #: (an ``actor`` in the fields still wins).
        self._actor = actor
        self._own_fields = True
        self._reset: Token[LLMCallSpan | None] | None = None
        self._captured: Captured | None = None
        self._trace: LLMTrace | None = None

    @property
    def ended(self) -> bool:
        """Whether the block has ended (and the call was handed to the emitter)."""
        return self._captured is not None

    @property
    def trace(self) -> LLMTrace | None:
        """The call's record once the block has ended (``None`` before, or when the
        call could not be recorded); its ``trace_id`` is the id sent."""
        if self._trace is None and self._captured is not None:
            self._trace = build_llm(self._captured, [])
        return self._trace

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        # A decorated function's calls share the fields given at decoration time:
        # each call's copy of the span copies them before setting its own.
        self._own_fields = False
        return super().__call__(func)

    def __enter__(self) -> LLMCallSpan:
        if not self._own_fields:
            self.fields = dict(self.fields)
            self._own_fields = True
        self._reset = _llm_call.set(self)
        self._started_s = perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed_s = perf_counter() - self._started_s
        reset = self._reset
        if reset is not None:
            self._reset = None
            _llm_call.reset(reset)
        try:
            fields = self.fields
            names = tuple(fields)
            shape = SHAPES.get(names)
            actor = self._actor
            captured = (
                build_llm,
                self.provider,
                self.model,
                shape_of(names) if shape is None else shape,
                elapsed_s * 1000,
                None if exc is None else _error_text(exc),
                PLAN_ID.get(),
                DECISION_ID.get(),
                ACTOR.get() if actor is None else actor,
                _attributes.get(),
                _plan_state.get(),
                # ids.stamp_at(time.time()), read here: the id and time in one int.
                ((time_ns() // 1000) << _STAMP_SHIFT) | (_ids._state.next_count() & _COUNTER_MASK),
                *fields.values(),
            )
            self._captured = captured
            self._trace = None
            emitter = self._emitter
            if emitter is None:
                # hook_emitter()'s answer when the default emitter is open, read here.
                emitter = _emitters._default
                if emitter is None or emitter._closed:
                    emitter = hook_emitter()
            emitter.capture_one(captured)
        except Exception:
            if exc is None:
                raise
            # The block's own exception is what the caller must see, unchanged.
            logger.warning("fleettrace could not record %r", self, exc_info=True)

    def update(self, **fields: Any) -> None:
        """Set ``LLMTrace`` fields known once the call returned (tokens and their
        details, retry_count...). ``prompt_tokens=None`` / ``completion_tokens=None``
        say the provider returned no usage: the record's tokens are unknown and its
        cost unpriced, never zero."""
        self.fields.update(fields)

    def first_token(self) -> None:
        """Mark the first streamed chunk: ``ttft_ms`` is the time from the start of
        the block to now. Only the first mark counts; a ``ttft_ms`` given with
        :meth:`update` wins over it."""
        fields = self.fields
        if "ttft_ms" not in fields:
            fields["ttft_ms"] = (perf_counter() - self._started_s) * 1000
