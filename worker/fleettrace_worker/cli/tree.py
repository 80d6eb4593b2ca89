"""``fleettrace traces tree PLAN_ID``: one plan as a tree, and the ancestors line of
``fleettrace traces show``.

The tree (read by :mod:`fleettrace_worker.store.tree_queries`) is printed with rich's
``Tree``: the plan, its child plans, decisions, actors, LLM calls and tools, each with
its start, duration and cost (a node's cost and tokens cover its whole subtree; a
cost nobody could price shows ``unpriced``). ``--json`` prints the same structure
as one object: every node has ``kind``, ``name``, its times, figures and
``children`` (``null`` for what is unknown, never ``0``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.text import Text
from rich.tree import Tree

from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options, render
from fleettrace_worker.store import migrations
from fleettrace_worker.store.tree_queries import Node, TreeQueries

_ICONS = {"plan": "plan", "decision": "decision", "actor": "actor", "llm": "llm", "tool": "tool"}


def register(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[..., None],
) -> None:
    """Add ``tree`` to the ``traces`` actions (``common`` adds the database and
    namespace options and ``--json``)."""
    tree = actions.add_parser(
        "tree",
        help="one plan as a tree: child plans, decisions, actors, LLM calls, tools",
        description="One plan as a tree: its child plans, decisions, actors, LLM calls and "
        "tools, each with its start, duration and cost. A node's cost and tokens cover "
        "everything under it; unpriced means no call under it could be priced.",
    )
    common(tree, listing=False)
    tree.add_argument("plan_id", metavar="PLAN_ID", help="the plan (any plan of a tree)")
    tree.add_argument("--utc", action="store_true", help="times in UTC, not local time")
    tree.set_defaults(handler=run_tree)


def run_tree(args: argparse.Namespace) -> int:
    namespace = options.namespace_scope(args)
    with migrations.pool_for_reading(options.database_url(args)) as pool:
        root = TreeQueries(pool, namespace=namespace).tree(args.plan_id)
    if root is None:
        print(
            f"fleettrace traces: no plan with id {args.plan_id!r} in "
            f"{options.describe_scope(namespace)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.json:
        render.write_object(root.to_json())
        return EXIT_OK
    tree = Tree(label(root, utc=args.utc))
    _grow(tree, root, utc=args.utc)
    render.new_console().print(tree)
    return EXIT_OK


def _grow(branch: Tree, node: Node, *, utc: bool) -> None:
    for child in node.children:
        _grow(branch.add(label(child, utc=utc)), child, utc=utc)


def label(node: Node, *, utc: bool = False) -> Text:
    """One line of the tree: kind, name, start, duration, cost and what it holds."""
    parts: list[str] = [f"{_ICONS[node.kind]} {node.name}"]
    status = node.detail.get("status") or node.detail.get("outcome")
    if status is not None and status != "ok":
        parts.append(f"[{status}]")
    if node.started_at is not None:
        parts.append(render.format_time(node.started_at, utc=utc))
    duration = node.detail.get("latency_ms", node.duration_ms)
    if duration is not None:
        parts.append(f"{render.format_value(duration, render.Kind.DURATION)} ms")
    if node.kind != "tool":
        parts.append(f"cost {render.format_usd(node.cost_usd)} USD")
    figures = _figures(node)
    if figures:
        parts.append(f"({figures})")
    error = node.detail.get("error")
    if error:
        parts.append(f"error: {render.format_value(error, render.Kind.TEXT)}")
    return Text("  ".join(parts))


def _figures(node: Node) -> str:
    shown: list[str] = []
    if node.kind != "llm" and node.calls:
        shown.append(render.count_of(node.calls, "call"))
    if node.calls:
        shown.append(f"{node.prompt_tokens + node.completion_tokens:,} tokens")
    if node.kind not in ("tool", "llm") and node.tool_calls:
        shown.append(render.count_of(node.tool_calls, "tool call"))
    if node.unpriced_calls and node.kind != "llm":
        shown.append(f"{node.unpriced_calls:,} unpriced")
    return ", ".join(shown)


def ancestors_line(chain: list[Node]) -> str:
    """The ``ancestors`` value of ``traces show``: root plan first, each with its
    cost and duration."""
    steps: list[str] = []
    for node in chain:
        duration = node.duration_ms
        timing = (
            ""
            if duration is None
            else f", {render.format_value(duration, render.Kind.DURATION)} ms"
        )
        steps.append(f"{node.kind} {node.name} ({render.format_usd(node.cost_usd)} USD{timing})")
    return " > ".join(steps) or render.UNKNOWN
