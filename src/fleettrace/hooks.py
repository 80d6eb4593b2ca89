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

import logging
import math
from collections.abc import Mapping, Sequence
from time import perf_counter
from time import time as wall_s
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from fleettrace import attributes, plan_scope
from fleettrace import emitter as _emitters
from fleettrace.attributes import Attributes
from fleettrace.capture import Captured, build_plan, build_sample
from fleettrace.emitter import Emitter, hook_emitter
from fleettrace.ids import uuid7_int

# Re-exported: the LLM call span is one of the hooks (its code is apart for its cost).
from fleettrace.llm_span import LLMCallSpan as LLMCallSpan  # noqa: PLC0414 (re-export)
from fleettrace.llm_span import current_llm_call as current_llm_call  # noqa: PLC0414 (re-export)
from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace
from fleettrace.plan_scope import error_text as _error_text
from fleettrace.plan_token import TOKEN_PREFIX, PlanPlace
from fleettrace.spans import (
    ACTOR,
    DECISION_ID,
    PLAN_ID,
    Span,
    TimedSpan,
    ToolSpan,
    check_value,
    checked_name,
    new_id,
)
from fleettrace.tree_records import PlanRecord

logger = logging.getLogger("fleettrace.hooks")

CONTEXT_TIERS: Final = frozenset({"hot", "warm", "cold"})
INDEX_BACKENDS: Final = frozenset({"text", "vector", "graph"})
SANDBOX_OPERATIONS: Final = frozenset({"create", "commit", "rollback"})
TOTAL_PHASE: Final = "total"

P = ParamSpec("P")
R = TypeVar("R")


def current_plan_id() -> str | None:
    return PLAN_ID.get()


def current_decision_id() -> str | None:
    return DECISION_ID.get()


def current_actor() -> str | None:
    return ACTOR.get()


def current_plan_token() -> str | None:
    """The token of the plan open in this context (see :meth:`PlanSpan.token`)."""
    return plan_scope.current_token()


_MS: Final = 0.001

#: Label dicts shared by every sample of the same actor, tool or plan total (a
#: sample's record copies its labels; these are never changed), so a buffered sample
#: holds a reference rather than a dict of its own. Bounded: a name past the bound
#: gets a dict of its own.
_ACTOR_LABELS: dict[str, dict[str, str]] = {}
_TOTAL_LABELS: Final = {"phase": TOTAL_PHASE}
#: The phases of every plan that ran none (its record copies them; never changed).
_NO_PHASES: Final[dict[str, float]] = {}
_MAX_SHARED_LABELS: Final = 1024


def _shared_labels(known: dict[str, dict[str, str]], label: str, name: str) -> dict[str, str]:
    """``{label: name}``, kept in ``known`` for the next span of ``name``."""
    labels = {label: name}
    if len(known) < _MAX_SHARED_LABELS:
        known[name] = labels
    return labels


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
        self._captured: Captured | None = None
        self._record: PlanRecord | None = None
        self.budget_usd: float | None = None

    @property
    def record(self) -> PlanRecord | None:
        """The plan's record once its block has ended (made when first asked for, from
        what was captured: the record the sender sends)."""
        if self._record is None and self._captured is not None:
            self._record = build_plan(self._captured, [])
        return self._record

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
        self.plan_id = self._given_id or new_id()
        self.state = plan_scope.start(self.plan_id, self._given_parent)
        self.parent = self.state.parent
        if self.parent is not None:
            self.emitter.observe(
                MetricKey.PLAN_CHILD_PLANS_COUNT, 1, {"plan": self.parent}, plan_id=self.parent
            )
        if self.budget_usd is not None:
            self.emitter.observe(
                MetricKey.PLAN_BUDGET_USD,
                self.budget_usd,
                {"plan": self.plan_id},
                plan_id=self.plan_id,
            )
        self._set(PLAN_ID, self.plan_id)
        self._set(DECISION_ID, None)
        self._set_attributes(self._given, "a plan")
        self._set(plan_scope.var(), self.state)

    def _exit(self, elapsed_s: float, error: BaseException | None) -> None:
        self._observe(MetricKey.PLAN_DURATION_SECONDS, elapsed_s, _TOTAL_LABELS)
        if self.state is not None:
            # Made by the sender thread, like every hook's record.
            self._captured = (
                build_plan,
                self.state,
                elapsed_s,
                None if error is None else _error_text(error),
                dict(self.state.phases_ms) if self.state.phases_ms else _NO_PHASES,
                uuid7_int(),
            )
            self.emitter.capture(self._captured)


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
        self.decision_id = self._given_id or new_id()
        self._set(DECISION_ID, self.decision_id)
        self._set_attributes(self._given, "a decision")
        plan_id = PLAN_ID.get()
        if plan_id is not None:
            self._observe(MetricKey.PLAN_DECISIONS_COUNT, 1, {"plan": plan_id})


class ActorSpan(TimedSpan):
    """An actor invocation: the actor's name is stamped on the LLM calls inside."""

    # Shared by every actor span (see ToolSpan).
    key = MetricKey.ACTOR_INVOCATION_DURATION_MS
    _unit_s = _MS
    _outcome_key = None
    _on_end = None

    def __init__(
        self,
        name: str,
        emitter: Emitter | None,
        given: tuple[Attributes, list[str]] | None = None,
    ) -> None:
        # Set here rather than through the parents' __init__ (see ToolSpan).
        self._emitter = emitter
        labels = _ACTOR_LABELS.get(name)
        self.labels = _shared_labels(_ACTOR_LABELS, "actor", name) if labels is None else labels
        self._given = given
        self.name = name

    def __enter__(self) -> ActorSpan:
        self._token = ACTOR.set(self.name)
        if self._given is not None:
            self._tokens = []
            self._set_attributes(self._given, "an actor")
        self._started_s = perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed_s = perf_counter() - self._started_s
        try:
            emitter = self._emitter
            if emitter is None:
                # hook_emitter()'s answer when the default emitter is open, read here.
                emitter = _emitters._default
                if emitter is None or emitter._closed:
                    emitter = hook_emitter()
            emitter.capture_one(
                (
                    build_sample,
                    MetricKey.ACTOR_INVOCATION_DURATION_MS,
                    elapsed_s * 1000,
                    self.labels,
                    PLAN_ID.get(),
                    wall_s(),
                )
            )
        except Exception:
            if exc is None:
                raise
            # The block's own exception is what the caller must see, unchanged.
            logger.warning("fleettrace could not record %r", self, exc_info=True)
        finally:
            if self._given is not None:
                tokens = self._tokens
                while tokens:
                    var, token = tokens.pop()
                    var.reset(token)
            ACTOR.reset(self._token)

    def llm(self, provider: str, model: str, **fields: Any) -> LLMCallSpan:
        """An LLM call made by this actor (see :func:`llm_call`)."""
        return LLMCallSpan(provider, model, fields, self._emitter, self.name)


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
    fields.setdefault("plan_id", PLAN_ID.get())
    fields.setdefault("decision_id", DECISION_ID.get())
    fields.setdefault("actor", ACTOR.get())
    target = hook_emitter(emitter)
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
    budget_usd: float | None = None,
) -> PlanSpan:
    """A plan; ``plan_id`` defaults to a new id, ``parent`` to the current plan. A
    ``parent`` from another process is the token of its plan (``PlanSpan.token``) or a
    plain plan id. The attributes given hold for every record inside it. ``budget_usd``
    (a finite number, 0 or more) is recorded as the plan's ``plan.budget_usd`` when the
    block starts, for readers to compare with its cost (the dashboard's Overview)."""
    if parent is not None and not (isinstance(parent, str) and parent.startswith(TOKEN_PREFIX)):
        parent = checked_name("parent", parent)
    span = PlanSpan(
        None if plan_id is None else checked_name("plan_id", plan_id),
        parent,
        emitter,
        attributes.given(tags, metadata, user_id, session_id),
    )
    span.budget_usd = None if budget_usd is None else checked_budget(budget_usd)
    return span


def checked_budget(value: float) -> float:
    """A plan's budget in USD: a finite number, 0 or more (checked at the call)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"budget_usd must be a finite number of USD, 0 or more, got {value!r}")
    return float(value)


def _add_phase(span: TimedSpan, elapsed_s: float, error: BaseException | None) -> None:
    plan_scope.add_phase(span.labels["phase"], elapsed_s * 1000)


def phase(name: str, *, emitter: Emitter | None = None) -> TimedSpan:
    """A phase of the current plan (``plan.duration_seconds{phase=name}``); its
    duration is also summed into the plan's record (``phases_ms``)."""
    labels = {"phase": checked_name("phase", name)}
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
    if tags is None and metadata is None and user_id is None and session_id is None:
        return ActorSpan(checked_name("actor", name), emitter)
    return ActorSpan(
        checked_name("actor", name), emitter, attributes.given(tags, metadata, user_id, session_id)
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


def tool(name: str, *, emitter: Emitter | None = None) -> ToolSpan:
    """A tool execution: its duration and its outcome (``tool.error_rate{tool,outcome}``),
    and a ``ToolCall`` record of its own in the plan tree."""
    return ToolSpan(checked_name("tool", name), emitter)


def context_build(tier: str, *, emitter: Emitter | None = None) -> TimedSpan:
    """Building context from a tier: ``hot``, ``warm`` or ``cold``."""
    labels = {"tier": check_value("tier", tier, CONTEXT_TIERS)}
    return TimedSpan(MetricKey.CONTEXT_BUILD_DURATION_MS, labels, unit_s=_MS, emitter=emitter)


def index_query(backend: str, *, emitter: Emitter | None = None) -> TimedSpan:
    """An index query on a backend: ``text``, ``vector`` or ``graph``."""
    labels = {"backend": check_value("backend", backend, INDEX_BACKENDS)}
    return TimedSpan(MetricKey.INDEX_QUERY_DURATION_MS, labels, unit_s=_MS, emitter=emitter)


def sandbox(operation: str, *, emitter: Emitter | None = None) -> TimedSpan:
    """A sandbox operation: ``create``, ``commit`` or ``rollback``."""
    labels = {"operation": check_value("operation", operation, SANDBOX_OPERATIONS)}
    return TimedSpan(MetricKey.SANDBOX_OPERATION_DURATION_MS, labels, unit_s=_MS, emitter=emitter)


def set_hot_context_tokens(tokens: int, *, emitter: Emitter | None = None) -> None:
    """Report how many tokens the hot context holds now (a gauge: last value wins)."""
    if type(tokens) is not int or tokens < 0:
        raise ValueError(f"tokens must be a non-negative integer, got {tokens!r}")
    hook_emitter(emitter).observe(MetricKey.CONTEXT_TOKENS_USED, tokens, plan_id=PLAN_ID.get())
