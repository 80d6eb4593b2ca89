"""HTML of one plan (its tree with a waterfall) and of one call's details.

The tree is a table, one row per node depth first (plans, decisions, actors, LLM calls,
tools), indented by depth, with the subtree's duration, calls, tokens, cost and errors;
a failed node's row is marked. Its last column is the waterfall: a bar placed by the
node's start and sized by its duration within the asked plan's span. The bars are SVG
rectangles whose ``x`` and ``width`` are attributes written here: the
Content-Security-Policy forbids inline ``style``, and no script or build step is needed.
Every value an agent wrote (plan ids, names, errors, tags, metadata) goes through ``e``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace_worker.serve.dashboard.pages import (
    e,
    number,
    plan_href,
    table,
    usd,
    when,
    with_namespace,
)
from fleettrace_worker.store.tree_queries import Node

#: The waterfall's width in SVG units; bars narrower than MIN_BAR stay visible.
WIDTH: Final = 1000
MIN_BAR: Final = 4
#: Indentation classes in style.css go this deep; deeper nodes keep the last one.
MAX_DEPTH_CLASS: Final = 12


def call_href(trace_id: str, keys: Keys) -> str:
    return with_namespace("/calls/" + quote(trace_id, safe=""), keys)


def walk(node: Node, depth: int = 0) -> Iterator[tuple[int, Node]]:
    yield depth, node
    for child in node.children:
        yield from walk(child, depth + 1)


def _bar(node: Node, start: datetime | None, span_ms: float) -> str:
    if start is None or node.started_at is None or node.duration_ms is None:
        return ""
    offset_ms = (node.started_at - start).total_seconds() * 1000
    x = round(max(0.0, offset_ms) / span_ms * WIDTH, 1) if span_ms else 0.0
    width = max(MIN_BAR, round(node.duration_ms / span_ms * WIDTH, 1) if span_ms else WIDTH)
    width = min(width, WIDTH)
    x = min(x, WIDTH - width)  # a bar at the very end stays inside the box
    failed = " failed" if node.errors and node.kind in ("llm", "tool") else ""
    label = (
        f"{node.kind} {node.name}: starts at {offset_ms:.0f} ms, lasts {node.duration_ms:.0f} ms"
    )
    return (
        f'<svg class="bar" viewBox="0 0 {WIDTH} 10" preserveAspectRatio="none" role="img" '
        f'aria-label="{e(label)}"><rect class="kind-{e(node.kind)}{failed}" x="{x}" y="0" '
        f'width="{width}" height="10"></rect></svg>'
    )


def _name(node: Node, keys: Keys, root: Node) -> str:
    kind = f'<span class="kind">{e(node.kind)}</span> '
    if node.kind == "llm":
        text = f'<a href="{e(call_href(node.detail["trace_id"], keys))}">{e(node.name)}</a>'
    elif node.kind == "plan" and node is not root:
        text = f'<a href="{e(plan_href(node.name, keys))}">{e(node.name)}</a>'
    else:
        text = e(node.name)
    error = node.detail.get("error")
    if error or node.detail.get("outcome") == "error" or node.detail.get("status") == "error":
        text += f' <span class="err" title="{e(error or "failed")}">error</span>'
    return kind + text


TREE_HEAD: Final = (
    "node",
    "starts at (ms)",
    "duration (ms)",
    "calls",
    "unpriced calls",
    "prompt tokens",
    "completion tokens",
    "cost (USD)",
    "tools",
    "errors",
    "timeline",
)


def tree_table(root: Node, keys: Keys) -> str:
    """The tree and its waterfall, one row per node: ``<tr data-kind data-name data-depth>``."""
    span_ms = root.duration_ms or 0.0
    rows = []
    for depth, node in walk(root):
        offset = (
            (node.started_at - root.started_at).total_seconds() * 1000
            if node.started_at is not None and root.started_at is not None
            else None
        )
        cells = (
            _name(node, keys, root),
            number(None if offset is None else round(offset, 1)),
            number(None if node.duration_ms is None else round(node.duration_ms, 1)),
            e(node.calls),
            e(node.unpriced_calls),
            e(node.prompt_tokens),
            e(node.completion_tokens),
            usd(node.cost_usd) if node.calls else "",
            e(node.tool_calls),
            e(node.errors),
            _bar(node, root.started_at, span_ms),
        )
        marks = f"depth-{min(depth, MAX_DEPTH_CLASS)}" + (" failed" if node.errors else "")
        rows.append(
            f'<tr class="{marks}" data-kind="{e(node.kind)}" data-name="{e(node.name)}" '
            f'data-depth="{depth}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
        )
    scale = f"timeline, 0 to {number(round(span_ms, 1))} ms" if span_ms else "timeline"
    heads = "".join(f'<th scope="col">{e(h)}</th>' for h in (*TREE_HEAD[:-1], scale))
    return (
        '<table id="plan-tree" class="tree"><caption>Plan tree and timeline (bars: start and '
        "duration within the plan)</caption>"
        f"<thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def plan_summary(root: Node) -> str:
    started = root.started_at.isoformat() if root.started_at else None
    status = root.detail.get("status", "")
    parent = root.detail.get("parent_plan_id")
    return (
        f'<p id="plan-summary">Status <strong>{e(status)}</strong>'
        + (f", started {when(started)}" if started else "")
        + (f", {number(round(root.duration_ms, 1))} ms" if root.duration_ms is not None else "")
        + f"; {e(root.calls)} calls ({e(root.unpriced_calls)} unpriced), "
        f"{usd(root.cost_usd) if root.calls else 'no calls'}"
        + (" USD" if root.cost_usd is not None else "")
        + f", {e(root.prompt_tokens)} prompt and {e(root.completion_tokens)} completion tokens, "
        f"{e(root.tool_calls)} tool calls, {e(root.errors)} errors"
        + (f"; child of {e(parent)}" if parent else "")
        + ".</p>"
    )


def _value(value: Any) -> str:
    if value is None:
        return '<span class="note">not reported</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, list | dict):
        if not value:
            return '<span class="note">none</span>'
        return f"<code>{e(json.dumps(value, ensure_ascii=False, sort_keys=True))}</code>"
    return e(value)


def call_details(trace: LLMTrace, ancestors: list[Node], keys: Keys) -> str:
    """The call's fields as a definition list (``#call-details``), its place above it."""
    place = " &rsaquo; ".join(
        f'<a href="{e(plan_href(node.name, keys))}">{e(node.kind)} {e(node.name)}</a>'
        if node.kind == "plan"
        else f"{e(node.kind)} {e(node.name)}"
        for node in ancestors
    )
    fields: list[tuple[str, str]] = [
        ("trace id", e(trace.trace_id)),
        ("provider", e(trace.provider)),
        ("model", e(trace.model)),
        ("started", when(trace.started_at.isoformat())),
        ("cost (USD)", usd(trace.cost_usd)),
        ("prompt tokens", _value(trace.prompt_tokens)),
        ("completion tokens", _value(trace.completion_tokens)),
        ("cache read tokens", _value(trace.cache_read_tokens)),
        ("cache write tokens", _value(trace.cache_write_tokens)),
        ("reasoning tokens", _value(trace.reasoning_tokens)),
        ("latency (ms)", number(trace.latency_ms)),
        ("time to first token (ms)", _value(trace.ttft_ms)),
        ("streamed", _value(trace.streaming)),
        ("retries", e(trace.retry_count)),
        ("error", e(trace.error) if trace.error else '<span class="note">none</span>'),
        (
            "plan",
            f'<a href="{e(plan_href(trace.plan_id, keys))}">{e(trace.plan_id)}</a>'
            if trace.plan_id
            else _value(None),
        ),
        ("decision", _value(trace.decision_id)),
        ("actor", _value(trace.actor)),
        ("user", _value(trace.user_id)),
        ("session", _value(trace.session_id)),
        ("tags", _value(trace.tags)),
        ("metadata", _value(trace.metadata)),
        ("tools asked for", _value(trace.tool_calls)),
        ("context hash", _value(trace.context_hash)),
    ]
    items = "".join(f"<dt>{e(name)}</dt><dd>{value}</dd>" for name, value in fields)
    failed = ' class="failed"' if trace.error else ""
    return (
        f'<p id="call-place">{place}</p>' if place else ""
    ) + f'<dl id="call-details"{failed}>{items}</dl>'


def plans_table(items: list[dict[str, Any]], keys: Keys) -> str:
    return table(
        "Plans (calls in the last 90 days unless a range is given; figures of the calls "
        "the search selects)",
        (
            "plan",
            "calls",
            "unpriced calls",
            "cost (USD)",
            "prompt tokens",
            "completion tokens",
            "errors",
            "first call",
            "last call",
        ),
        (
            (
                f'<a href="{e(plan_href(p["plan_id"], keys))}">{e(p["plan_id"])}</a>',
                e(p["calls"]),
                e(p["unpriced_calls"]),
                usd(p["cost_usd"]),
                e(p["prompt_tokens"]),
                e(p["completion_tokens"]),
                e(p["errors"]),
                when(p["first_call"]),
                when(p["last_call"]),
            )
            for p in items
        ),
        "plans-table",
    )
