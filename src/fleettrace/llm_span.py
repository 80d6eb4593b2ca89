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
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from time import time as wall_s
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from fleettrace import attributes, plan_scope
from fleettrace.capture import SHAPES, Captured, build_llm, shape_of
from fleettrace.emitter import Emitter, hook_emitter
from fleettrace.ids import uuid7_int
from fleettrace.model import LLMTrace
from fleettrace.plan_scope import error_text as _error_text
from fleettrace.spans import ACTOR, DECISION_ID, PLAN_ID, Span

logger = logging.getLogger("fleettrace.hooks")

P = ParamSpec("P")
R = TypeVar("R")

# The LLM call span open in this context: a wrapped client fills it (fleettrace.integrations)
# instead of recording a second call for the same request.
_llm_call: ContextVar[LLMCallSpan | None] = ContextVar("fleettrace_llm_call", default=None)


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

    _started_s = 0.0
    _own_fields = True
    _reset: Token[LLMCallSpan | None] | None = None
    _captured: Captured | None = None
    _trace: LLMTrace | None = None

    def __init__(
        self,
        provider: str,
        model: str,
        fields: dict[str, Any],
        emitter: Emitter | None,
        actor: str | None = None,
    ) -> None:
        # Only what differs per call is set here; the rest are the class's defaults
        # below (each attribute set costs as much as a tenth of the hook).
        self._emitter = emitter
        self.provider = provider
        self.model = model
        #: The fields set so far; this span's own dict (a kwargs dict made for it)
        #: until it decorates a function, whose calls each copy it (see __enter__).
        self.fields = fields
        #: The actor of ``actor.llm(...)``: the call's, whatever the context says
        #: (an ``actor`` in the fields still wins).
        self._actor = actor

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
        self._started_s = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed_s = time.perf_counter() - self._started_s
        if self._reset is not None:
            _llm_call.reset(self._reset)
            self._reset = None
        try:
            fields = self.fields
            names = tuple(fields)
            captured = (
                build_llm,
                self.provider,
                self.model,
                SHAPES.get(names) or shape_of(names),
                elapsed_s * 1000,
                None if exc is None else _error_text(exc),
                PLAN_ID.get(),
                DECISION_ID.get(),
                ACTOR.get() if self._actor is None else self._actor,
                attributes.current.get(),
                plan_scope.var().get(),
                uuid7_int(),
                wall_s(),
                *fields.values(),
            )
            self._captured, self._trace = captured, None
            hook_emitter(self._emitter).capture(captured)
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
        if "ttft_ms" not in self.fields:
            self.fields["ttft_ms"] = (time.perf_counter() - self._started_s) * 1000
