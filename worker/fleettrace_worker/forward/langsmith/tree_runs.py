"""The plan tree as LangSmith runs: a pure mapping, no I/O (see :mod:`.runs`).

A record that carries its tree's root (format version 3: ``root_plan_id``,
``root_started_at``, ``plan_path``) is placed in one LangSmith trace per root plan run:

- the root plan's run (``chain``) starts at the root's real start, known to every
  record of the tree; its end, status and phases arrive with the root's plan record,
  which updates the run (``PATCH``);
- each child plan is a ``chain`` run under its parent; its real start and end arrive
  with its plan record (created with them if it comes first, updated otherwise);
- an actor is a ``chain`` run of its own (name ``actor <name>``) under its plan; it
  spans the first call or tool LangSmith received for it (later ones do not move it);
- an LLM call is an ``llm`` run (see :func:`.runs.llm_run`), a tool call a ``tool``
  run, under their actor (else their plan).

Run ids are uuid5s of the root (its id and start, so a plan id reused for another run
is another trace) and the ids along the path, so every worker derives the same runs
from any record, and a redelivered entry posts nothing new (LangSmith answers 409).
``dotted_order`` segments of plans and actors use the root's start, the one time every
record knows, so a parent's segment is never later than its child's.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Final

from fleettrace.model import LLMTrace
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.forward.langsmith import runs as day_runs
from fleettrace_worker.forward.langsmith.runs import (
    PLAN_ROOT_NAMESPACE,
    PLAN_RUN_TYPE,
    Run,
    dotted_segment,
    llm_run,
)

TOOL_RUN_TYPE: Final = "tool"
ACTOR_RUN_TYPE: Final = "chain"
#: A run dict with this key set is an update of a run (``PATCH``), not a new one.
PATCH: Final = "patch"


def _root_key(root_plan_id: str, root_started_at: datetime) -> str:
    return f"tree/{root_plan_id}/{root_started_at.isoformat()}"


def plan_run_id(root_plan_id: str, root_started_at: datetime, plan_id: str) -> uuid.UUID:
    """The run of ``plan_id`` in the tree of that root (the root's own run included)."""
    key = _root_key(root_plan_id, root_started_at)
    if plan_id == root_plan_id:
        return uuid.uuid5(PLAN_ROOT_NAMESPACE, key)
    return uuid.uuid5(PLAN_ROOT_NAMESPACE, f"{key}/plan/{plan_id}")


def actor_run_id(
    root_key_run: uuid.UUID, plan_id: str, decision: str | None, actor: str
) -> uuid.UUID:
    return uuid.uuid5(root_key_run, f"actor/{plan_id}/{decision or ''}/{actor}")


def _plan_run(
    plan_id: str, run_id: uuid.UUID, root_id: uuid.UUID, parent: Run | None, *, start: datetime,
    project: str,
) -> Run:  # fmt: skip
    own = dotted_segment(start, run_id)
    run: Run = {
        "id": run_id,
        "trace_id": root_id,
        "dotted_order": own if parent is None else f"{parent['dotted_order']}.{own}",
        "name": f"plan {plan_id}",
        "run_type": PLAN_RUN_TYPE,
        "inputs": {"plan_id": plan_id},
        "outputs": {},
        "start_time": start,
        "extra": {"metadata": {"plan_id": plan_id}},
        "session_name": project,
    }
    if parent is not None:
        run["parent_run_id"] = parent["id"]
    return run


def plan_chain(
    root_plan_id: str, root_started_at: datetime, path: list[str], plan_id: str, project: str
) -> list[Run]:
    """The runs of the plans from the root down to ``plan_id``, parents first."""
    chain = [*path, plan_id] if path else [plan_id]
    if chain[0] != root_plan_id:
        chain = [root_plan_id, *chain]
    root_id = plan_run_id(root_plan_id, root_started_at, root_plan_id)
    runs: list[Run] = []
    for plan in chain:
        run_id = plan_run_id(root_plan_id, root_started_at, plan)
        parent = runs[-1] if runs else None
        runs.append(
            _plan_run(plan, run_id, root_id, parent, start=root_started_at, project=project)
        )
    return runs


def _place(
    record: LLMTrace | ToolCall, project: str, start: datetime, end: datetime
) -> list[Run] | None:
    """The plan (and actor) runs a call or tool hangs under; None when not in a tree."""
    if record.plan_id is None or record.root_plan_id is None or record.root_started_at is None:
        return None
    root_at = record.root_started_at
    runs = plan_chain(record.root_plan_id, root_at, record.plan_path, record.plan_id, project)
    if record.actor is not None:
        plan = runs[-1]
        run_id = actor_run_id(runs[0]["id"], record.plan_id, record.decision_id, record.actor)
        runs.append(
            {
                "id": run_id,
                "trace_id": runs[0]["id"],
                "parent_run_id": plan["id"],
                "dotted_order": f"{plan['dotted_order']}.{dotted_segment(root_at, run_id)}",
                "name": f"actor {record.actor}",
                "run_type": ACTOR_RUN_TYPE,
                "inputs": {"actor": record.actor, "decision_id": record.decision_id},
                "outputs": {},
                "start_time": start,
                "end_time": end,
                "extra": {
                    "metadata": {
                        "plan_id": record.plan_id,
                        "decision_id": record.decision_id,
                        "actor": record.actor,
                    }
                },
                "session_name": project,
            }
        )
    return runs


def _under(run: Run, parents: list[Run], start: datetime) -> Run:
    parent = parents[-1]
    root_at = parents[0]["start_time"]
    # A clock behind the root's host must not put a child before its parent's segment.
    at = max(start, root_at)
    run["trace_id"] = parents[0]["id"]
    run["parent_run_id"] = parent["id"]
    run["dotted_order"] = f"{parent['dotted_order']}.{dotted_segment(at, run['id'])}"
    return run


def llm_runs(trace: LLMTrace, llm: Run, project: str) -> list[Run] | None:
    """The runs of a call in a tree (``llm``: its run from ``runs.llm_run``); None when
    the call carries no root."""
    end = trace.started_at + timedelta(milliseconds=trace.latency_ms)
    parents = _place(trace, project, trace.started_at, end)
    if parents is None:
        return None
    return [*parents, _under(llm, parents, trace.started_at)]


def tool_runs(call: ToolCall, project: str) -> list[Run]:
    """The runs of one tool call: a ``tool`` run, under its plan and actor when it has a
    tree, else a trace of its own."""
    end = call.started_at + timedelta(milliseconds=call.duration_ms)
    run: Run = {
        "id": call.call_id,
        "name": call.tool,
        "run_type": TOOL_RUN_TYPE,
        "inputs": {"tool": call.tool},
        "outputs": {"outcome": call.outcome},
        "start_time": call.started_at,
        "end_time": end,
        "error": call.error,
        "extra": {
            "metadata": {
                "plan_id": call.plan_id,
                "decision_id": call.decision_id,
                "actor": call.actor,
                "duration_ms": call.duration_ms,
            }
        },
        "session_name": project,
    }
    parents = _place(call, project, call.started_at, end)
    if parents is None:
        run["trace_id"] = call.call_id
        run["dotted_order"] = dotted_segment(call.started_at, call.call_id)
        return [run]
    return [*parents, _under(run, parents, call.started_at)]


def plan_runs(plan: PlanRecord, project: str) -> list[Run]:
    """The runs a plan's end record needs: its ancestors, its own run with its real
    start and end, and an update that sets them on a run made earlier from a call."""
    runs = plan_chain(
        plan.root_plan_id, plan.root_started_at, plan.plan_path, plan.plan_id, project
    )
    own = runs[-1]
    outputs: dict[str, Any] = {"status": plan.status, "phases_ms": dict(plan.phases_ms)}
    own.update(
        start_time=plan.started_at,
        end_time=plan.ended_at,
        error=plan.error,
        outputs=outputs,
    )
    # The client sends every field of an update, null for those not given: the update
    # repeats the run's place so that nothing is cleared.
    update: Run = {
        "id": own["id"],
        "trace_id": own["trace_id"],
        "dotted_order": own["dotted_order"],
        "parent_run_id": own.get("parent_run_id"),
        "name": own["name"],
        "run_type": PLAN_RUN_TYPE,
        "inputs": own["inputs"],
        "session_name": project,
        "start_time": plan.started_at,
        "end_time": plan.ended_at,
        "error": plan.error,
        "outputs": outputs,
        PATCH: True,
    }
    return [*runs, update]


def runs_for(record: LLMTrace | ToolCall | PlanRecord, project: str) -> list[Run]:
    """Every run one record needs, parents before children: in its plan tree when it
    carries the tree's root, else as :func:`.runs.runs_for` placed it before."""
    if isinstance(record, ToolCall):
        return tool_runs(record, project)
    if isinstance(record, PlanRecord):
        return plan_runs(record, project)
    in_tree = llm_runs(record, llm_run(record, project), project)
    return in_tree if in_tree is not None else day_runs.runs_for(record, project)
