"""The plan-tree side of the hooks: the plan scope open in a context, and the records
its scopes make (:mod:`fleettrace.tree_records`).

``fleettrace.plan(...)`` opens a :class:`PlanState` in ``contextvars``: the plan's
place in its tree (:class:`~fleettrace.plan_token.PlanPlace`), its start and the
durations of the phases run inside it. Every record made inside (an LLM call, a
tool call) is stamped with that place (:func:`place_fields`); the plan's own record
is made when its scope ends (:meth:`PlanState.end_record`). Kept apart from
:mod:`fleettrace.hooks` so the hooks stay the thin timing layer they are.
"""

from __future__ import annotations

import logging
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from fleettrace.model import MAX_ERROR_CHARS, MAX_LATENCY_MS
from fleettrace.plan_token import TOKEN_PREFIX, PlanPlace, parse_token, root_place
from fleettrace.tree_records import MAX_PLAN_PHASES, PlanRecord, ToolCall

logger = logging.getLogger("fleettrace.hooks")


@dataclass(slots=True)
class PlanState:
    """One open plan scope: where it sits in the tree, when it started, its phases."""

    plan_id: str
    parent: str | None
    place: PlanPlace
    started_at: datetime
    phases_ms: dict[str, float] = field(default_factory=dict)

    def add_phase(self, name: str, elapsed_ms: float) -> None:
        """Sum a phase's duration; phases past ``MAX_PLAN_PHASES`` names are left out."""
        if name in self.phases_ms or len(self.phases_ms) < MAX_PLAN_PHASES:
            self.phases_ms[name] = self.phases_ms.get(name, 0.0) + elapsed_ms

    def end_record(self, elapsed_s: float, error: BaseException | None) -> PlanRecord | None:
        """The plan's lifecycle record; ``None`` (logged) if it cannot be built, since
        the end of a plan must never raise into the agent."""
        return self.record_of(
            elapsed_s, None if error is None else error_text(error), dict(self.phases_ms)
        )

    def record_of(
        self,
        elapsed_s: float,
        error: str | None,
        phases_ms: dict[str, float],
        record_id: uuid.UUID | None = None,
    ) -> PlanRecord | None:
        """The record of this plan ended after ``elapsed_s`` with ``error`` (its text)
        and ``phases_ms`` (and ``record_id``, else a new one); ``None`` (logged) if it
        cannot be built."""
        try:
            return PlanRecord(
                record_id=record_id or uuid.uuid4(),
                plan_id=self.plan_id,
                parent_plan_id=self.parent,
                root_plan_id=self.place.root_plan_id,
                root_started_at=self.place.root_started_at,
                plan_path=self.place.ancestors,
                started_at=self.started_at,
                ended_at=self.started_at + timedelta(seconds=elapsed_s),
                duration_ms=elapsed_s * 1000,
                status="ok" if error is None else "error",
                error=error,
                phases_ms=phases_ms,
            )
        except ValidationError as problem:
            logger.warning("fleettrace could not record plan %s: %s", self.plan_id, problem)
            return None


_current: ContextVar[PlanState | None] = ContextVar("fleettrace_plan_state", default=None)


def var() -> ContextVar[PlanState | None]:
    """The context variable a plan span sets (and resets when it ends)."""
    return _current


def start(plan_id: str, given_parent: str | None) -> PlanState:
    """The state of a plan starting now: a child of ``given_parent`` (a token, else a
    plain plan id), else of the plan open in this context, else a root."""
    now = datetime.now(UTC)
    parent_place: PlanPlace | None
    if given_parent is None:
        outer = _current.get()
        parent_place = None if outer is None else outer.place
    elif given_parent.startswith(TOKEN_PREFIX):
        parent_place = parse_token(given_parent)
        if parent_place is None:
            # Damaged on the way: the plan still runs and records, as a root of its own.
            logger.warning(
                "fleettrace could not read the plan token given as parent of plan %s; "
                "recording it as a plan of its own",
                plan_id,
            )
    else:
        # A plain plan id names the parent, not its place: it stands as the root,
        # started no later than this plan.
        parent_place = root_place(given_parent, now)
    if parent_place is None:
        return PlanState(plan_id, None, root_place(plan_id, now), now)
    return PlanState(plan_id, parent_place.plan_id, parent_place.child(plan_id), now)


def current_token() -> str | None:
    """The token of the plan open in this context, if any."""
    state = _current.get()
    return None if state is None else state.place.token()


def place_fields(plan_id: str | None) -> dict[str, Any]:
    """The tree fields of a record of ``plan_id``, from the plan scope open here
    (nothing when the record names another plan, or none is open)."""
    state = _current.get()
    if plan_id is None or state is None or state.plan_id != plan_id:
        return {}
    place = state.place
    return {
        "root_plan_id": place.root_plan_id,
        "root_started_at": place.root_started_at,
        "plan_path": place.ancestors,
    }


def add_phase(name: str, elapsed_ms: float) -> None:
    state = _current.get()
    if state is not None:
        state.add_phase(name, elapsed_ms)


def error_text(error: BaseException) -> str:
    """How a record names an exception: ``"<ExceptionType>: <message>"``, bounded."""
    return f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


def tool_call(
    name: str,
    elapsed_s: float,
    error: BaseException | None,
    *,
    plan_id: str | None,
    decision_id: str | None,
    actor: str | None,
    place: dict[str, Any] | None = None,
) -> ToolCall:
    """The record of a tool that ran for ``elapsed_s`` and ended now; its place in the
    tree is ``place`` when given, else the plan scope's open here. A tool that ran
    longer than a record holds (a day) is recorded as that long, not refused."""
    return ToolCall(
        tool=name,
        plan_id=plan_id,
        decision_id=decision_id,
        actor=actor,
        started_at=datetime.now(UTC) - timedelta(seconds=elapsed_s),
        duration_ms=min(elapsed_s * 1000, MAX_LATENCY_MS),
        outcome="ok" if error is None else "error",
        error=None if error is None else error_text(error),
        **(place if place is not None else place_fields(plan_id)),
    )
