"""Hooks for agent code: plans, decisions, actors, LLM calls, tools and the rest.

Every hook is a :class:`Span`: a context manager (``with`` / ``async with``) that is
also a decorator of sync and async functions. Spans time their block and record a
metric sample at its end; the ids of the current plan, decision and actor travel in
``contextvars``, so nested calls, asyncio tasks and ``asyncio.to_thread`` inherit
them without passing them around (a plain ``threading.Thread`` starts with an empty
context: run it under ``contextvars.copy_context().run``).

An exception inside a span is recorded (a tool failure, an LLM call's error) and
re-raised unchanged. Label values the metric table restricts (context tiers, index
backends, sandbox operations) are checked when the hook is called: an unknown one
raises ``ValueError`` there, not later in a sender thread.

The plan, decision and actor scopes, and each LLM call, also take ``tags``,
``metadata``, ``user_id`` and ``session_id`` (:mod:`fleettrace.attributes` says how
they merge and their limits). A bad value among them never raises: the valid parts
are kept, the rest dropped and counted in ``Emitter.stats.rejected``.

Hooks record through the process's default emitter (``fleettrace.configure`` /
``get_emitter``) unless given one.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast

from fleettrace import attributes, plan_scope
from fleettrace.attributes import Attributes
from fleettrace.emitter import Emitter, get_emitter
from fleettrace.metrics import MetricKey
from fleettrace.model import MAX_LABEL_CHARS, LLMTrace
from fleettrace.plan_scope import error_text as _error_text
from fleettrace.plan_token import TOKEN_PREFIX, PlanPlace
from fleettrace.tree_records import PlanRecord

CONTEXT_TIERS: Final = frozenset({"hot", "warm", "cold"})
INDEX_BACKENDS: Final = frozenset({"text", "vector", "graph"})
SANDBOX_OPERATIONS: Final = frozenset({"create", "commit", "rollback"})
TOTAL_PHASE: Final = "total"

logger = logging.getLogger("fleettrace.hooks")

_plan_id: ContextVar[str | None] = ContextVar("fleettrace_plan_id", default=None)
_decision_id: ContextVar[str | None] = ContextVar("fleettrace_decision_id", default=None)
_actor: ContextVar[str | None] = ContextVar("fleettrace_actor", default=None)
# The LLM call span open in this context: a wrapped client fills it (fleettrace.integrations)
# instead of recording a second call for the same request.
_llm_call: ContextVar[LLMCallSpan | None] = ContextVar("fleettrace_llm_call", default=None)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="Span")


def current_plan_id() -> str | None:
    return _plan_id.get()


def current_decision_id() -> str | None:
    return _decision_id.get()


def current_actor() -> str | None:
    return _actor.get()


def current_plan_token() -> str | None:
    """The token of the plan open in this context (see :meth:`PlanSpan.token`)."""
    return plan_scope.current_token()


def current_llm_call() -> LLMCallSpan | None:
    """The ``llm_call`` / ``actor.llm`` span open in this context, if any."""
    return _llm_call.get()


def _name(kind: str, value: str) -> str:
    """A name used as a label value, checked at the call rather than when the block ends."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL_CHARS or "\x00" in value:
        raise ValueError(
            f"{kind} must be a string of 1-{MAX_LABEL_CHARS} characters without NUL, got {value!r}"
        )
    return value


def _check(kind: str, value: str, allowed: frozenset[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{kind} must be one of {', '.join(sorted(allowed))}; got {value!r}")
    return value


def _new_id() -> str:
    return uuid.uuid4().hex


class Span:
    """A timed block that records when it ends; subclasses say what is set and recorded.

    One instance serves one ``with`` block; as a decorator it copies itself for each
    call, so a decorated function may run concurrently.
    """

    def __init__(self, emitter: Emitter | None = None) -> None:
        self._emitter = emitter
        self._started_s = 0.0
        self._tokens: list[tuple[ContextVar[Any], Token[Any]]] = []

    @property
    def emitter(self) -> Emitter:
        return self._emitter if self._emitter is not None else get_emitter()

    # What a subclass sets on entry and records on exit.
    def _enter(self) -> None:
        """Called when the block starts (set context variables here)."""

    def _exit(self, elapsed_s: float, error: BaseException | None) -> None:
        """Called when the block ends, with its wall time and the exception if any."""

    def _set(self, var: ContextVar[Any], value: Any) -> None:
        self._tokens.append((var, var.set(value)))

    def _set_attributes(self, given: tuple[Attributes, list[str]] | None, where: str) -> None:
        """Put the attributes given to this scope in force inside it, merged into the
        ones around it; what was invalid or over the limits is counted, not raised."""
        if given is None:
            return
        own, rejected = given
        merged, over = own.inside(attributes.current.get())
        self._set(attributes.current, merged)
        if rejected or over:
            self.emitter.reject([*rejected, *over], where)

    def _observe(self, key: MetricKey, value: float, labels: dict[str, str]) -> None:
        self.emitter.observe(key, value, labels, plan_id=_plan_id.get())

    def __enter__(self: S) -> S:
        self._tokens = []
        self._enter()
        self._started_s = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed_s = time.perf_counter() - self._started_s
        try:
            self._exit(elapsed_s, exc)
        except Exception:
            if exc is None:
                raise
            # The block's own exception is what the caller must see, unchanged.
            logger.warning("fleettrace could not record %r", self, exc_info=True)
        finally:
            while self._tokens:
                var, token = self._tokens.pop()
                var.reset(token)

    async def __aenter__(self: S) -> S:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[P, Awaitable[Any]], func)

            @functools.wraps(func)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                with copy.copy(self):
                    return await async_func(*args, **kwargs)

            return cast(Callable[P, R], run_async)

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with copy.copy(self):
                return func(*args, **kwargs)

        return run


class TimedSpan(Span):
    """Records the block's duration under one histogram key and label set; for tools
    also the outcome, so the error rate is derivable."""

    def __init__(
        self,
        key: MetricKey,
        labels: dict[str, str],
        *,
        unit_s: float,
        outcome_key: MetricKey | None = None,
        emitter: Emitter | None = None,
        on_end: Callable[[TimedSpan, float, BaseException | None], None] | None = None,
    ) -> None:
        super().__init__(emitter)
        self.key = key
        self.labels = labels
        self._unit_s = unit_s
        self._outcome_key = outcome_key
        self._on_end = on_end

    def _exit(self, elapsed_s: float, error: BaseException | None) -> None:
        self._observe(self.key, elapsed_s / self._unit_s, self.labels)
        if self._outcome_key is not None:
            outcome = "ok" if error is None else "error"
            self._observe(self._outcome_key, 1, {**self.labels, "outcome": outcome})
        if self._on_end is not None:
            self._on_end(self, elapsed_s, error)


_MS: Final = 0.001


class PlanSpan(Span):
    """A plan: its id becomes the current plan; a plan started inside another counts
    as that plan's child; the whole plan's wall time is phase ``total``.

    Its place in the plan tree comes from the plan it runs in, or from ``parent``: the
    :meth:`token` of a plan in another process, or a plain plan id. When the block
    ends it records a :class:`~fleettrace.tree_records.PlanRecord` (start, end,
    status, phases); see :mod:`fleettrace.plan_scope`.
    """

    def __init__(
        self,
        plan_id: str | None,
        parent: str | None,
        emitter: Emitter | None,
        given: tuple[Attributes, list[str]] | None = None,
    ) -> None:
        super().__init__(emitter)
        self._given = given
        self._given_id = plan_id
        self._given_parent = parent
        self.plan_id = plan_id or ""
        self.parent: str | None = parent
        self.state: plan_scope.PlanState | None = None
        self.record: PlanRecord | None = None

    @property
    def place(self) -> PlanPlace | None:
        return None if self.state is None else self.state.place

    def token(self) -> str:
        """A short string that makes a plan in another process a child of this one:
        ``fleettrace.plan(..., parent=token)`` (see :mod:`fleettrace.plan_token`)."""
        if self.state is None:
            raise RuntimeError("a plan has a token once its block has started")
        return self.state.place.token()

    def _enter(self) -> None:
        self.plan_id = self._given_id or _new_id()
        self.state = plan_scope.start(self.plan_id, self._given_parent)
        self.parent = self.state.parent
        if self.parent is not None:
            self.emitter.observe(
                MetricKey.PLAN_CHILD_PLANS_COUNT, 1, {"plan": self.parent}, plan_id=self.parent
            )
        self._set(_plan_id, self.plan_id)
        self._set(_decision_id, None)
        self._set_attributes(self._given, "a plan")
        self._set(plan_scope.var(), self.state)

    def _exit(self, elapsed_s: float, error: BaseException | None) -> None:
        self._observe(MetricKey.PLAN_DURATION_SECONDS, elapsed_s, {"phase": TOTAL_PHASE})
        if self.state is not None:
            self.record = self.state.end_record(elapsed_s, error)
            if self.record is not None:
                self.emitter.record(self.record)


class DecisionSpan(Span):
    """A decision of the current plan: its id is stamped on the LLM calls inside."""

    def __init__(
        self,
        decision_id: str | None,
        emitter: Emitter | None,
        given: tuple[Attributes, list[str]] | None = None,
    ) -> None:
        super().__init__(emitter)
        self._given = given
        self._given_id = decision_id
        self.decision_id = decision_id or ""

    def _enter(self) -> None:
        self.decision_id = self._given_id or _new_id()
        self._set(_decision_id, self.decision_id)
        self._set_attributes(self._given, "a decision")
        plan_id = _plan_id.get()
        if plan_id is not None:
            self._observe(MetricKey.PLAN_DECISIONS_COUNT, 1, {"plan": plan_id})


class ActorSpan(TimedSpan):
    """An actor invocation: the actor's name is stamped on the LLM calls inside."""

    def __init__(
        self,
        name: str,
        emitter: Emitter | None,
        given: tuple[Attributes, list[str]] | None = None,
    ) -> None:
        super().__init__(
            MetricKey.ACTOR_INVOCATION_DURATION_MS, {"actor": name}, unit_s=_MS, emitter=emitter
        )
        self._given = given
        self.name = name

    def _enter(self) -> None:
        self._set(_actor, self.name)
        self._set_attributes(self._given, "an actor")

    def llm(self, provider: str, model: str, **fields: Any) -> LLMCallSpan:
        """An LLM call made by this actor (see :func:`llm_call`)."""
        return LLMCallSpan(provider, model, {"actor": self.name, **fields}, self._emitter)


class LLMCallSpan(Span):
    """One LLM call, recorded as an ``LLMTrace`` when the block ends.

    Its latency is the block's wall time unless ``latency_ms`` is given; an exception
    sets ``error`` to ``"<ExceptionType>: <message>"``. Usage known only after the
    call (tokens, retries, cost) is set inside the block with :meth:`update`.
    """

    def __init__(
        self, provider: str, model: str, fields: dict[str, Any], emitter: Emitter | None
    ) -> None:
        super().__init__(emitter)
        self.provider = provider
        self.model = model
        self.fields = fields
        self.trace: LLMTrace | None = None

    def _enter(self) -> None:
        # A decorated function's calls share the fields given at decoration time.
        self.fields = dict(self.fields)
        self._set(_llm_call, self)

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

    def _exit(self, elapsed_s: float, error: BaseException | None) -> None:
        fields = dict(self.fields)
        fields.setdefault("latency_ms", elapsed_s * 1000)
        if error is not None:
            fields["error"] = _error_text(error)
        self.trace = record_llm_call(self.provider, self.model, emitter=self._emitter, **fields)


def record_llm_call(
    provider: str,
    model: str,
    *,
    emitter: Emitter | None = None,
    scope: Attributes | None = None,
    **fields: Any,
) -> LLMTrace:
    """Record an LLM call whose figures are already known; plan, decision and actor
    come from the context unless given. Returns the trace (with its ``trace_id``).

    ``tags``, ``metadata``, ``user_id`` and ``session_id`` given here are merged into
    those of the scopes around the call (``scope``, else the current context's);
    their invalid parts, and an invalid ``ttft_ms``, are dropped and counted.
    """
    fields.setdefault("plan_id", _plan_id.get())
    fields.setdefault("decision_id", _decision_id.get())
    fields.setdefault("actor", _actor.get())
    target = emitter if emitter is not None else get_emitter()
    rejected = attributes.take(fields, attributes.current.get() if scope is None else scope)
    if rejected:
        target.reject(rejected, "an LLM call")
    for name, value in plan_scope.place_fields(fields["plan_id"]).items():
        fields.setdefault(name, value)
    trace = LLMTrace(provider=provider, model=model, **fields)
    target.record(trace)
    return trace


# -- the hooks ------------------------------------------------------------------------


def plan(
    plan_id: str | None = None,
    *,
    parent: str | None = None,
    emitter: Emitter | None = None,
    tags: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
) -> PlanSpan:
    """A plan; ``plan_id`` defaults to a new id, ``parent`` to the current plan. A
    ``parent`` from another process is the token of its plan (``PlanSpan.token``) or a
    plain plan id. The attributes given hold for every record inside it."""
    if parent is not None and not (isinstance(parent, str) and parent.startswith(TOKEN_PREFIX)):
        parent = _name("parent", parent)
    return PlanSpan(
        None if plan_id is None else _name("plan_id", plan_id),
        parent,
        emitter,
        attributes.given(tags, metadata, user_id, session_id),
    )


def _add_phase(span: TimedSpan, elapsed_s: float, error: BaseException | None) -> None:
    plan_scope.add_phase(span.labels["phase"], elapsed_s * 1000)


def phase(name: str, *, emitter: Emitter | None = None) -> TimedSpan:
    """A phase of the current plan (``plan.duration_seconds{phase=name}``); its
    duration is also summed into the plan's record (``phases_ms``)."""
    labels = {"phase": _name("phase", name)}
    return TimedSpan(
        MetricKey.PLAN_DURATION_SECONDS, labels, unit_s=1.0, emitter=emitter, on_end=_add_phase
    )


def decision(
    decision_id: str | None = None,
    *,
    emitter: Emitter | None = None,
    tags: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
) -> DecisionSpan:
    """A decision; counted on the current plan's ``plan.decisions_count``. The
    attributes given hold for every record inside it."""
    return DecisionSpan(decision_id, emitter, attributes.given(tags, metadata, user_id, session_id))


def actor(
    name: str,
    *,
    emitter: Emitter | None = None,
    tags: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
) -> ActorSpan:
    """An actor invocation (``actor.invocation_duration_ms{actor}``). The attributes
    given hold for every record inside it."""
    return ActorSpan(
        _name("actor", name), emitter, attributes.given(tags, metadata, user_id, session_id)
    )


def llm_call(
    provider: str,
    model: str,
    *,
    emitter: Emitter | None = None,
    streaming: bool = False,
    retry_count: int = 0,
    prompt_tokens: int | None = 0,
    completion_tokens: int | None = 0,
    tool_calls: Sequence[str] = (),
    **fields: Any,
) -> LLMCallSpan:
    """An LLM call recorded as an ``LLMTrace`` at the end of the block; its cost, left
    out, is priced by the emitter's sender thread, not here."""
    return LLMCallSpan(
        provider,
        model,
        {
            "streaming": streaming,
            "retry_count": retry_count,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "tool_calls": list(tool_calls),
            **fields,
        },
        emitter,
    )


def _record_tool(span: TimedSpan, elapsed_s: float, error: BaseException | None) -> None:
    """A tool's own record (a ``ToolCall``) in the plan, decision and actor around it."""
    call = plan_scope.tool_call(
        span.labels["tool"],
        elapsed_s,
        error,
        plan_id=_plan_id.get(),
        decision_id=_decision_id.get(),
        actor=_actor.get(),
    )
    span.emitter.record(call)


def tool(name: str, *, emitter: Emitter | None = None) -> TimedSpan:
    """A tool execution: its duration and its outcome (``tool.error_rate{tool,outcome}``),
    and a ``ToolCall`` record of its own in the plan tree."""
    return TimedSpan(
        MetricKey.TOOL_INVOCATION_DURATION_MS,
        {"tool": _name("tool", name)},
        unit_s=_MS,
        outcome_key=MetricKey.TOOL_ERROR_RATE,
        emitter=emitter,
        on_end=_record_tool,
    )


def context_build(tier: str, *, emitter: Emitter | None = None) -> TimedSpan:
    """Building context from a tier: ``hot``, ``warm`` or ``cold``."""
    labels = {"tier": _check("tier", tier, CONTEXT_TIERS)}
    return TimedSpan(MetricKey.CONTEXT_BUILD_DURATION_MS, labels, unit_s=_MS, emitter=emitter)


def index_query(backend: str, *, emitter: Emitter | None = None) -> TimedSpan:
    """An index query on a backend: ``text``, ``vector`` or ``graph``."""
    labels = {"backend": _check("backend", backend, INDEX_BACKENDS)}
    return TimedSpan(MetricKey.INDEX_QUERY_DURATION_MS, labels, unit_s=_MS, emitter=emitter)


def sandbox(operation: str, *, emitter: Emitter | None = None) -> TimedSpan:
    """A sandbox operation: ``create``, ``commit`` or ``rollback``."""
    labels = {"operation": _check("operation", operation, SANDBOX_OPERATIONS)}
    return TimedSpan(MetricKey.SANDBOX_OPERATION_DURATION_MS, labels, unit_s=_MS, emitter=emitter)


def set_hot_context_tokens(tokens: int, *, emitter: Emitter | None = None) -> None:
    """Report how many tokens the hot context holds now (a gauge: last value wins)."""
    if type(tokens) is not int or tokens < 0:
        raise ValueError(f"tokens must be a non-negative integer, got {tokens!r}")
    (emitter if emitter is not None else get_emitter()).observe(
        MetricKey.CONTEXT_TOKENS_USED, tokens, plan_id=_plan_id.get()
    )
