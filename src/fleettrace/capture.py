"""What a hook captures on the caller's thread, and how the sender thread makes
records of it.

A hook's cost is what agent code pays on every LLM call and tool run, so a hook does
the least it can where it runs: it reads the clock and the scope it runs in (plan,
decision, actor, attributes, plan-tree place: references, nothing copied), makes the
record's id (:mod:`fleettrace.ids`) and appends one plain tuple to the emitter's
buffer. The first element of the tuple is the function that makes the record of it;
the sender thread calls it before pricing and encoding, so pydantic's
validation, the merging of attributes and the building of timestamps all happen off
the caller's thread.

A value the caller gave that the record cannot hold never raises into agent code:
the builder keeps the valid fields, drops the invalid ones (a token count it drops
reads as unknown, ``None``, never zero) and names each drop by reason, which the
emitter counts in ``EmitterStats.rejected`` as it does for attributes
(:mod:`fleettrace.attributes`). A record that cannot be made at all (its provider or
model is not a name) is dropped and counted in ``EmitterStats.dropped``.

The caller may still ask for the record it made (``call.trace``): the same builder
makes it from the same tuple, so it is the record the sender sends (but for the cost,
which only the sender prices).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError

from fleettrace import attributes
from fleettrace.ids import stamp_us, uuid7_int, uuid7_of_stamp
from fleettrace.model import MAX_LATENCY_MS, TOKEN_DETAIL_FIELDS, LLMTrace, MetricSample
from fleettrace.tree_records import AnyRecord, PlanRecord, ToolCall

logger = logging.getLogger("fleettrace.hooks")

#: A captured hook: ``(builder, *what the hook knew)``.
Captured = tuple[Any, ...]
Builder = Callable[[Captured, list[str]], AnyRecord | None]
#: How many elements of a captured LLM call come before its field values.
LLM_FIXED: Final = 12

_TOTALS: Final = frozenset(("prompt_tokens", "completion_tokens"))
_REQUIRED: Final = frozenset(("provider", "model"))


def when(created_s: float) -> datetime:
    """The UTC time of a ``time.time()`` reading (a float: 16 bytes less to buffer than
    ``time_ns()``'s int, and still finer than the microseconds a record keeps)."""
    return datetime.fromtimestamp(created_s, UTC)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def when_us(unix_us: int) -> datetime:
    """The UTC time of a Unix time in microseconds (exact: no float between)."""
    return _EPOCH + timedelta(microseconds=unix_us)


#: Field-name tuples of LLM calls seen so far, so that every captured call with the
#: same fields shares one (bounded: a shape past the bound is kept by its call alone).
SHAPES: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_SHAPES: Final = 1024


def shape_of(names: tuple[str, ...]) -> tuple[str, ...]:
    """The shared tuple equal to ``names`` (the first time: ``names`` itself)."""
    known = SHAPES.get(names)
    if known is not None:
        return known
    if len(SHAPES) < _MAX_SHAPES:
        SHAPES[names] = names
    return names


# -- LLM calls ----------------------------------------------------------------------


def build_llm(item: Captured, rejected: list[str]) -> LLMTrace | None:
    """An ``LLMTrace`` of a captured call: the fields given win over what the context
    said (as with ``record_llm_call``); attributes merged into the scope's.

    The tuple is ``(build_llm, provider, model, field names, latency_ms, error,
    plan_id, decision_id, actor, attributes, plan state, stamp, *field values)``:
    the call's fields dict is not kept, its values are part of the tuple and its
    names a tuple shared by every call with the same names (:func:`shape_of`), which
    is about half the memory of a buffered call; its id and time are one integer
    (:func:`fleettrace.ids.stamp_at`), made into the ``trace_id`` and ``started_at``
    here."""
    (
        _,
        provider,
        model,
        names,
        latency_ms,
        error,
        plan_id,
        decision_id,
        actor,
        scope,
        state,
        stamp,
    ) = item[:LLM_FIXED]
    fields = dict(zip(names, item[LLM_FIXED:], strict=True))
    fields.setdefault("plan_id", plan_id)
    fields.setdefault("decision_id", decision_id)
    fields.setdefault("actor", actor)
    fields.setdefault("latency_ms", latency_ms)
    if error is not None:
        fields["error"] = error
    rejected.extend(attributes.take(fields, scope))
    if state is not None and fields["plan_id"] == state.plan_id:
        place = state.place
        fields.setdefault("root_plan_id", place.root_plan_id)
        fields.setdefault("root_started_at", place.root_started_at)
        fields.setdefault("plan_path", place.ancestors)
    # The id and time the hook took stand in for a bad one given (the caller's and the
    # sender's record must agree on them).
    own = {
        "trace_id": uuid.UUID(int=uuid7_of_stamp(stamp)),
        "started_at": when_us(stamp_us(stamp)),
    }
    for name, value in own.items():
        fields.setdefault(name, value)
    fields["provider"] = provider
    fields["model"] = model
    return validated_trace(fields, rejected, own)


def validated_trace(
    fields: dict[str, Any], rejected: list[str], own: dict[str, Any] | None = None
) -> LLMTrace | None:
    """``LLMTrace(**fields)`` with what it refuses left out, each named in
    ``rejected`` (a field in ``own`` takes that value instead); ``None`` when provider
    or model is refused (or, after every other field refused was left out, the record
    still is)."""
    for _ in range(4):
        try:
            return LLMTrace(**fields)
        except ValidationError as error:
            bad: set[str] = set()
            for problem in error.errors(include_url=False, include_input=False):
                location = problem["loc"]
                name = location[0] if location else None
                if name in _REQUIRED:
                    return None
                if isinstance(name, str) and name in fields:
                    bad.add(name)
                elif not location:  # a detail larger than its total
                    details = [d for d in TOKEN_DETAIL_FIELDS if fields.get(d) is not None]
                    for detail in details:
                        del fields[detail]
                    if details:
                        rejected.append(attributes.REJECT_DETAIL_OVER_TOTAL)
        for name in bad:
            known = name in LLMTrace.model_fields
            rejected.append(
                f"{attributes.REJECT_INVALID_PREFIX}{name}"
                if known
                else attributes.REJECT_UNKNOWN_FIELD
            )
            if name in _TOTALS:
                fields[name] = None  # unknown, never a zero the caller did not say
            elif own is not None and name in own and fields[name] is not own[name]:
                fields[name] = own[name]
            else:
                del fields[name]
    return None


# -- metric samples and tool calls --------------------------------------------------


def build_sample(item: Captured, rejected: list[str]) -> MetricSample | None:
    _, key, value, labels, plan_id, created_s = item
    try:
        return MetricSample(
            key=key, value=value, labels=labels, plan_id=plan_id, observed_at=when(created_s)
        )
    except ValidationError as error:
        logger.warning("fleettrace could not record a sample of %s: %s", key, error)
        return None


def build_tool(item: Captured, rejected: list[str]) -> ToolCall | None:
    """A ``ToolCall`` of ``(build_tool, name, elapsed_s, error, plan_id, decision_id,
    actor, plan state, ended ns)``; placed in the tree by the plan state captured."""
    _, name, elapsed_s, error, plan_id, decision_id, actor, state, created_s = item
    place: dict[str, Any] = {}
    if state is not None and plan_id == state.plan_id:
        place = {
            "root_plan_id": state.place.root_plan_id,
            "root_started_at": state.place.root_started_at,
            "plan_path": state.place.ancestors,
        }
    try:
        return ToolCall(
            call_id=uuid.UUID(int=uuid7_int()),
            tool=name,
            plan_id=plan_id,
            decision_id=decision_id,
            actor=actor,
            started_at=when(created_s) - timedelta(seconds=elapsed_s),
            duration_ms=min(elapsed_s * 1000, MAX_LATENCY_MS),
            outcome="ok" if error is None else "error",
            error=error,
            **place,
        )
    except ValidationError as problem:
        logger.warning("fleettrace could not record a run of tool %s: %s", name, problem)
        return None


def build_plan(item: Captured, rejected: list[str]) -> PlanRecord | None:
    """A ``PlanRecord`` of ``(build_plan, plan state, elapsed_s, error, phases_ms,
    record id)``."""
    _, state, elapsed_s, error, phases_ms, id_int = item
    record: PlanRecord | None = state.record_of(elapsed_s, error, phases_ms, uuid.UUID(int=id_int))
    return record
