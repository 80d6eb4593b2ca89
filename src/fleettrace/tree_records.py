"""The records that make a plan a tree: a tool invocation and a plan's lifecycle.

An ``LLMTrace`` says which plan, decision and actor made a call; these two records add
what the tree needs besides the calls (stream format version 3):

- :class:`ToolCall`: one execution of a tool (``fleettrace.tool(...)``), with its
  start, duration, outcome and error, under the plan, decision and actor of the
  context it ran in.
- :class:`PlanRecord`: one plan's lifecycle, written when the plan's scope ends:
  start, end, status, the durations of its phases, and its parent plan.

Every record of a plan's tree (these two and ``LLMTrace``) carries the id and start of
the tree's root plan (``root_plan_id``, ``root_started_at``) and the ids of the plan's
ancestors (``plan_path``, root first, the plan itself not included), so a worker that
sees one record alone can place it: under which root, under which chain of plans.
The hooks fill them from the plan scopes in ``contextvars`` and from a plan token
handed to another process (:mod:`fleettrace.plan_token`).

Like ``LLMTrace``, both models are strict, frozen and refuse unknown fields, so the
agent and the worker validate a record by the same rules.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from fleettrace.model import (
    MAX_ERROR_CHARS,
    MAX_LATENCY_MS,
    MAX_PLAN_DEPTH,
    FiniteNonNegative,
    Id,
    LLMTrace,
    MetricSample,
    Name,
    UtcDatetime,
    _no_nul,
    _now,
)

#: Most phases one plan record carries (``fleettrace.phase`` names).
MAX_PLAN_PHASES: Final = 64
#: Longest plan (or phase) a plan record holds: 30 days. Plans outlive single calls.
MAX_PLAN_DURATION_MS: Final = 30 * 86_400_000.0

Outcome = Literal["ok", "error"]
PlanStatus = Literal["ok", "error"]
PlanPath = Annotated[list[Id], Field(max_length=MAX_PLAN_DEPTH)]
ErrorText = Annotated[str, StringConstraints(max_length=MAX_ERROR_CHARS), AfterValidator(_no_nul)]
Duration = Annotated[FiniteNonNegative, Field(le=MAX_LATENCY_MS)]
PlanDuration = Annotated[FiniteNonNegative, Field(le=MAX_PLAN_DURATION_MS)]


class ToolCall(BaseModel):
    """One execution of a tool: what ran, where in the tree, how long, how it ended."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, defer_build=True)

    call_id: uuid.UUID = Field(default_factory=uuid.uuid4, strict=False)
    tool: Name
    plan_id: Id | None = None
    decision_id: Id | None = None
    actor: Name | None = None
    root_plan_id: Id | None = None
    root_started_at: UtcDatetime | None = None
    plan_path: PlanPath = Field(default_factory=list)
    started_at: UtcDatetime = Field(default_factory=_now)
    duration_ms: Duration = 0.0
    outcome: Outcome = "ok"
    error: ErrorText | None = None

    @model_validator(mode="after")
    def _error_means_outcome_error(self) -> ToolCall:
        if self.outcome == "ok" and self.error is not None:
            raise ValueError("a tool call with an error has outcome 'error'")
        return self


class PlanRecord(BaseModel):
    """One plan's lifecycle, written when its scope ends.

    ``record_id`` names the record (a redelivered entry stores it once); a plan id the
    caller reuses for two runs makes two records. ``phases_ms`` holds the summed
    duration of each phase run inside the plan; ``duration_ms`` is the whole plan.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, defer_build=True)

    record_id: uuid.UUID = Field(default_factory=uuid.uuid4, strict=False)
    plan_id: Id
    parent_plan_id: Id | None = None
    root_plan_id: Id
    root_started_at: UtcDatetime
    plan_path: PlanPath = Field(default_factory=list)
    started_at: UtcDatetime
    ended_at: UtcDatetime
    duration_ms: PlanDuration = 0.0
    status: PlanStatus = "ok"
    error: ErrorText | None = None
    phases_ms: Annotated[dict[Name, PlanDuration], Field(max_length=MAX_PLAN_PHASES)] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _consistent(self) -> PlanRecord:
        # No check of root_started_at against started_at: a child plan on another host
        # reads another clock, and a skew is no reason to lose its record.
        if self.ended_at < self.started_at:
            raise ValueError("ended_at must not be before started_at")
        expected_parent = self.plan_path[-1] if self.plan_path else None
        if self.parent_plan_id != expected_parent:
            raise ValueError("parent_plan_id must be the last plan of plan_path")
        expected_root = self.plan_path[0] if self.plan_path else self.plan_id
        if self.root_plan_id != expected_root:
            raise ValueError("root_plan_id must be the first plan of plan_path (or the plan)")
        return self


#: Everything an emitter takes and a stream entry carries.
AnyRecord = LLMTrace | MetricSample | ToolCall | PlanRecord
