"""A plan's tree read back from PostgreSQL: plan, child plans, decisions, actors, LLM
calls and tools, each with its time, cost, tokens and latency.

Every row of a tree names its root plan (``root_plan_id``), so a tree costs one index
scan per table (``*_root_plan_idx``) whatever the size of the tables: the root of the
asked plan is looked up first (its plan record, else any call or tool of it), then
every row of that root is read, and the tree is built in memory and cut at the asked
plan. A plan's parent comes from its plan record, or, while the plan has not ended
(no record yet), from the ``plan_path`` its calls carry. Calls stored before the plan
tree existed (no root) are still found by their ``plan_id``, under the asked plan.

Totals of a node cover its whole subtree: ``cost_usd`` sums the priced calls and is
``None`` when none was priced (unknown is not free; ``unpriced_calls`` counts the
others), token sums cover the calls whose usage is known.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from psycopg import sql
from psycopg_pool import ConnectionPool

from fleettrace.model import LLMTrace
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.store import database
from fleettrace_worker.store.repository import _SELECT_TRACE, _TRACE_NAMES, _trace_of
from fleettrace_worker.store.tree_store import PLAN_COLUMNS, TOOL_CALL_COLUMNS

_TOOL_NAMES: Final = tuple(name for name, _ in TOOL_CALL_COLUMNS)
_PLAN_NAMES: Final = tuple(name for name, _ in PLAN_COLUMNS)
_SELECT_TOOL: Final = sql.SQL("SELECT {} FROM tool_calls").format(
    sql.SQL(", ").join(map(sql.Identifier, _TOOL_NAMES))
)
_LATEST: Final = datetime.max.replace(tzinfo=UTC)
_SELECT_PLAN: Final = sql.SQL("SELECT {} FROM plans").format(
    sql.SQL(", ").join(map(sql.Identifier, _PLAN_NAMES))
)
_TRACE: Final = (_SELECT_TRACE, LLMTrace, _TRACE_NAMES)
_TOOL: Final = (_SELECT_TOOL, ToolCall, _TOOL_NAMES)
_PLAN: Final = (_SELECT_PLAN, PlanRecord, _PLAN_NAMES)


@dataclass(slots=True)
class Node:
    """One node of the tree: ``kind`` is plan, decision, actor, llm or tool."""

    kind: str
    name: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    # Own figures (a call's or tool's); subtree totals are computed by totals().
    cost_usd: float | None = None
    calls: int = 0
    unpriced_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: int = 0
    errors: int = 0

    def totals(self) -> Node:
        """Fold the children's figures and times into this node (depth first)."""
        for child in self.children:
            child.totals()
            if child.cost_usd is not None:
                self.cost_usd = (self.cost_usd or 0.0) + child.cost_usd
            self.calls += child.calls
            self.unpriced_calls += child.unpriced_calls
            self.prompt_tokens += child.prompt_tokens
            self.completion_tokens += child.completion_tokens
            self.tool_calls += child.tool_calls
            self.errors += child.errors
            if child.started_at is not None and (
                self.started_at is None or child.started_at < self.started_at
            ):
                self.started_at = child.started_at
            if child.ended_at is not None and (
                self.ended_at is None or child.ended_at > self.ended_at
            ):
                self.ended_at = child.ended_at
        self.children.sort(key=_order)
        return self

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at) / timedelta(milliseconds=1)

    def to_json(self) -> dict[str, Any]:
        """The node as ``traces tree --json`` prints it (times RFC 3339 UTC)."""
        return {
            "kind": self.kind,
            "name": self.name,
            **self.detail,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": self.duration_ms,
            "cost_usd": self.cost_usd,
            "calls": self.calls,
            "unpriced_calls": self.unpriced_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tool_calls": self.tool_calls,
            "errors": self.errors,
            "children": [child.to_json() for child in self.children],
        }


def _order(node: Node) -> tuple[int, datetime, str]:
    rank = 0 if node.kind == "plan" else 1
    return (rank, node.started_at or _LATEST, node.name)


def llm_node(trace: LLMTrace) -> Node:
    known = trace.tokens_known
    return Node(
        "llm",
        f"{trace.provider}/{trace.model}",
        trace.started_at,
        trace.started_at + timedelta(milliseconds=trace.latency_ms),
        {
            "trace_id": str(trace.trace_id),
            "provider": trace.provider,
            "model": trace.model,
            "latency_ms": trace.latency_ms,
            "error": trace.error,
        },
        cost_usd=trace.cost_usd,
        calls=1,
        unpriced_calls=0 if trace.cost_usd is not None else 1,
        prompt_tokens=(trace.prompt_tokens or 0) if known else 0,
        completion_tokens=(trace.completion_tokens or 0) if known else 0,
        errors=1 if trace.error else 0,
    )


def tool_node(call: ToolCall) -> Node:
    return Node(
        "tool",
        call.tool,
        call.started_at,
        call.started_at + timedelta(milliseconds=call.duration_ms),
        {
            "call_id": str(call.call_id),
            "outcome": call.outcome,
            "latency_ms": call.duration_ms,
            "error": call.error,
        },
        tool_calls=1,
        errors=1 if call.outcome == "error" else 0,
    )


@dataclass(frozen=True, slots=True)
class TreeRows:
    """The rows of one tree (or of one plan stored before the tree existed)."""

    plans: list[PlanRecord]
    traces: list[LLMTrace]
    tools: list[ToolCall]


def _plan_node(plan_id: str, record: PlanRecord | None) -> Node:
    if record is None:
        return Node("plan", plan_id, detail={"plan_id": plan_id, "status": "running"})
    return Node(
        "plan",
        plan_id,
        record.started_at,
        record.ended_at,
        {
            "plan_id": plan_id,
            "parent_plan_id": record.parent_plan_id,
            "root_plan_id": record.root_plan_id,
            "status": record.status,
            "error": record.error,
            "phases_ms": dict(record.phases_ms),
        },
    )


def build(plan_id: str, rows: TreeRows) -> Node | None:
    """The tree rooted at ``plan_id`` from the rows of its whole tree; ``None`` when
    nothing of that plan is among them."""
    records: dict[str, PlanRecord] = {}
    for record in sorted(rows.plans, key=lambda r: r.started_at):
        records[record.plan_id] = record  # a reused plan id: its latest run
    parents: dict[str, str | None] = {p: r.parent_plan_id for p, r in records.items()}
    items: list[tuple[str | None, str | None, str | None, Node]] = []
    for trace in rows.traces:
        items.append((trace.plan_id, trace.decision_id, trace.actor, llm_node(trace)))
        _learn_path(parents, trace.plan_id, trace.plan_path)
    for call in rows.tools:
        items.append((call.plan_id, call.decision_id, call.actor, tool_node(call)))
        _learn_path(parents, call.plan_id, call.plan_path)
    if plan_id not in parents:
        return None
    nodes = {p: _plan_node(p, records.get(p)) for p in parents}
    for child, parent in parents.items():
        if parent is not None and parent in nodes and child != plan_id:
            nodes[parent].children.append(nodes[child])
    for plan, decision, actor, node in items:
        if plan is None or plan not in nodes:
            continue
        _place(nodes[plan], decision, actor, node)
    return nodes[plan_id].totals()


def _learn_path(parents: dict[str, str | None], plan_id: str | None, path: Sequence[str]) -> None:
    """Parents a record's ``plan_path`` tells, for plans whose record is not stored."""
    if plan_id is None:
        return
    chain = [*path, plan_id]
    for index, plan in enumerate(chain):
        parent = chain[index - 1] if index > 0 else None
        if parents.get(plan) is None:
            parents[plan] = parent


def _place(plan: Node, decision: str | None, actor: str | None, node: Node) -> None:
    """Hang a call or tool under its decision and actor inside its plan."""
    parent = plan
    for kind, name in (("decision", decision), ("actor", actor)):
        if name is None:
            continue
        found = next((c for c in parent.children if c.kind == kind and c.name == name), None)
        if found is None:
            found = Node(kind, name, detail={f"{kind}_id" if kind == "decision" else kind: name})
            parent.children.append(found)
        parent = found
    parent.children.append(node)


class TreeQueries:
    """Reads plan trees and one call's ancestors from PostgreSQL."""

    def __init__(self, pool: ConnectionPool, *, namespace: str | None = None) -> None:
        """``namespace`` keeps every read to the rows stored under it (None: every one)."""
        self._pool = pool
        self._namespace = namespace

    def root_of(self, plan_id: str) -> str | None:
        """The root plan of ``plan_id``'s tree (itself for a root); ``None`` when no
        row of it names one."""
        scope = sql.SQL("") if self._namespace is None else sql.SQL(" AND namespace = %s")
        params = (plan_id,) if self._namespace is None else (plan_id, self._namespace)
        with database.connection(self._pool) as conn:
            for query in (
                sql.SQL(
                    "SELECT root_plan_id FROM plans WHERE plan_id = %s{} "
                    "ORDER BY started_at DESC LIMIT 1"
                ).format(scope),
                sql.SQL(
                    "SELECT root_plan_id FROM llm_traces WHERE plan_id = %s{} "
                    "AND root_plan_id IS NOT NULL LIMIT 1"
                ).format(scope),
                sql.SQL(
                    "SELECT root_plan_id FROM tool_calls WHERE plan_id = %s{} "
                    "AND root_plan_id IS NOT NULL LIMIT 1"
                ).format(scope),
            ):
                row = conn.execute(query, params).fetchone()
                if row is not None:
                    return str(row[0])
        return None

    def rows(self, plan_id: str) -> TreeRows:
        """Every row of ``plan_id``'s tree, and its calls stored without a root."""
        root = self.root_of(plan_id)
        plans: list[PlanRecord] = []
        traces: list[LLMTrace] = []
        tools: list[ToolCall] = []
        with database.connection(self._pool) as conn:
            ns = self._namespace
            if root is not None:
                plans = _models(conn, "root_plan_id", root, _PLAN, namespace=ns)
                traces = _models(conn, "root_plan_id", root, _TRACE, namespace=ns)
                tools = _models(conn, "root_plan_id", root, _TOOL, namespace=ns)
            traces += _models(conn, "plan_id", plan_id, _TRACE, rootless=True, namespace=ns)
            tools += _models(conn, "plan_id", plan_id, _TOOL, rootless=True, namespace=ns)
        return TreeRows(plans, traces, tools)

    def tree(self, plan_id: str) -> Node | None:
        return build(plan_id, self.rows(plan_id))

    def ancestors(self, trace_id: uuid.UUID) -> tuple[LLMTrace, list[Node]] | None:
        """One call and the nodes above it, root plan first: plans, decision, actor
        (each with its subtree's totals). ``None`` when no such call is stored."""
        with database.connection(self._pool) as conn:
            found = _models(conn, "trace_id", trace_id, _TRACE, namespace=self._namespace)
        if not found:
            return None
        trace = found[0]
        if trace.plan_id is None:
            return trace, []
        root = trace.root_plan_id or trace.plan_id
        tree = self.tree(root)
        chain: list[Node] = []
        if tree is not None:
            _path_to(tree, str(trace.trace_id), chain)
        return trace, chain[:-1]


def _path_to(node: Node, trace_id: str, chain: list[Node]) -> bool:
    chain.append(node)
    if node.detail.get("trace_id") == trace_id:
        return True
    for child in node.children:
        if _path_to(child, trace_id, chain):
            return True
    chain.pop()
    return False


def _models(
    conn: Any,
    column: str,
    value: object,
    kind: tuple[sql.Composed, Any, Iterable[str]],
    *,
    rootless: bool = False,
    namespace: str | None = None,
) -> list[Any]:
    select, model, names = kind
    names = tuple(names)
    condition = sql.SQL("{} = %s").format(sql.Identifier(column))
    params: list[object] = [value]
    if rootless:
        condition = condition + sql.SQL(" AND root_plan_id IS NULL")
    if namespace is not None:
        condition = condition + sql.SQL(" AND namespace = %s")
        params.append(namespace)
    query = sql.SQL("{} WHERE {} ORDER BY started_at").format(select, condition)
    rows = conn.execute(query, params).fetchall()
    if model is LLMTrace:
        # The trace select ends with the namespace column, and NULL attributes mean none.
        return [_trace_of(row[: len(names)]) for row in rows]
    return [model.model_validate(dict(zip(names, row, strict=True))) for row in rows]
