"""The span machinery under every hook: a timed block that is a context manager and a
decorator, and the context variables that carry the current plan, decision and actor.

:mod:`fleettrace.hooks` builds each hook (plan, decision, actor, LLM call, tool, ...) on
:class:`Span` and :class:`TimedSpan`; this module holds what they share, so the hooks
module reads as the list of hooks.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from time import perf_counter
from time import time as wall_s
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast

from fleettrace import attributes
from fleettrace import emitter as _emitters
from fleettrace.attributes import Attributes
from fleettrace.capture import build_sample, build_tool
from fleettrace.emitter import Emitter, hook_emitter
from fleettrace.ids import uuid7_hex
from fleettrace.metrics import MetricKey
from fleettrace.model import MAX_LABEL_CHARS
from fleettrace.plan_scope import error_text
from fleettrace.plan_scope import var as plan_state

logger = logging.getLogger("fleettrace.hooks")

PLAN_ID: ContextVar[str | None] = ContextVar("fleettrace_plan_id", default=None)
DECISION_ID: ContextVar[str | None] = ContextVar("fleettrace_decision_id", default=None)
ACTOR: ContextVar[str | None] = ContextVar("fleettrace_actor", default=None)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="Span")


def checked_name(kind: str, value: str) -> str:
    """A name used as a label value, checked at the call rather than when the block ends."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL_CHARS or "\x00" in value:
        raise ValueError(
            f"{kind} must be a string of 1-{MAX_LABEL_CHARS} characters without NUL, got {value!r}"
        )
    return value


def check_value(kind: str, value: str, allowed: frozenset[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{kind} must be one of {', '.join(sorted(allowed))}; got {value!r}")
    return value


def new_id() -> str:
    """A plan or decision id: time-ordered and made in well under a microsecond."""
    return uuid7_hex()


class Span:
    """A timed block that records when it ends; subclasses say what is set and recorded.

    One instance serves one ``with`` block; as a decorator it copies itself for each
    call, so a decorated function may run concurrently.
    """

    # Slots, so that a subclass that declares its own (the LLM call span) has no
    # instance dict; the others have one.
    __slots__ = ("_emitter", "_started_s", "_tokens")

    def __init__(self, emitter: Emitter | None = None) -> None:
        self._emitter = emitter
        self._started_s = 0.0
        self._tokens: list[tuple[ContextVar[Any], Token[Any]]] = []

    @property
    def emitter(self) -> Emitter:
        return hook_emitter(self._emitter)

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
        """Capture a sample of ``key`` (labels checked by the hook); the sender thread
        makes the ``MetricSample``."""
        self.emitter.capture((build_sample, key, value, labels, PLAN_ID.get(), wall_s()))

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
        plan_id = PLAN_ID.get()
        now_s = wall_s()
        duration = (build_sample, self.key, elapsed_s / self._unit_s, self.labels, plan_id, now_s)
        if self._outcome_key is None:
            self.emitter.capture(duration)
        else:
            outcome = "ok" if error is None else "error"
            labels = {**self.labels, "outcome": outcome}
            self.emitter.capture(
                duration, (build_sample, self._outcome_key, 1, labels, plan_id, now_s)
            )
        if self._on_end is not None:
            self._on_end(self, elapsed_s, error)


#: A tool's label dicts (its duration's; its outcome's, ok and error), shared by
#: every run of the tool (a sample's record copies its labels; these are never
#: changed), so a buffered sample holds references rather than dicts of its own.
#: Bounded: a tool past the bound gets dicts of its own.
_TOOL_LABELS: dict[str, tuple[dict[str, str], dict[str, str], dict[str, str]]] = {}
_MAX_TOOLS_SHARED: Final = 1024
_plan_state = plan_state()


def _tool_labels(name: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    labels = (
        {"tool": name},
        {"tool": name, "outcome": "ok"},
        {"tool": name, "outcome": "error"},
    )
    if len(_TOOL_LABELS) < _MAX_TOOLS_SHARED:
        _TOOL_LABELS[name] = labels
    return labels


class ToolSpan(TimedSpan):
    """A tool run: its duration and outcome samples and its ``ToolCall`` record, all
    captured in one append when the block ends (the sender thread makes them)."""

    # What every tool span shares is set on the class: a tool is entered on every
    # run, and each attribute set or call level costs as much as the rest of the hook.
    key = MetricKey.TOOL_INVOCATION_DURATION_MS
    _unit_s = 0.001
    _outcome_key = MetricKey.TOOL_ERROR_RATE
    _on_end = None

    def __init__(self, name: str, emitter: Emitter | None) -> None:
        self._emitter = emitter
        labels = _TOOL_LABELS.get(name)
        self._labels = _tool_labels(name) if labels is None else labels
        self.labels = self._labels[0]
        self.name = name

    def __enter__(self) -> ToolSpan:
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
            name = self.name
            plan_id = PLAN_ID.get()
            now_s = wall_s()
            if exc is None:
                error, outcome = None, self._labels[1]
            else:
                error, outcome = error_text(exc), self._labels[2]
            emitter = self._emitter
            if emitter is None:
                # hook_emitter()'s answer when the default emitter is open, read here.
                emitter = _emitters._default
                if emitter is None or emitter._closed:
                    emitter = hook_emitter()
            emitter.capture(
                (
                    build_sample,
                    MetricKey.TOOL_INVOCATION_DURATION_MS,
                    elapsed_s * 1000,
                    self.labels,
                    plan_id,
                    now_s,
                ),
                (build_sample, MetricKey.TOOL_ERROR_RATE, 1, outcome, plan_id, now_s),
                (
                    build_tool,
                    name,
                    elapsed_s,
                    error,
                    plan_id,
                    DECISION_ID.get(),
                    ACTOR.get(),
                    _plan_state.get(),
                    now_s,
                ),
            )
        except Exception:
            if exc is None:
                raise
            # The block's own exception is what the caller must see, unchanged.
            logger.warning("fleettrace could not record %r", self, exc_info=True)
