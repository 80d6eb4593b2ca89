"""``fleettrace traces list|show|cost|tree``: the stored LLM calls, for people and scripts.

``--json`` output keeps its keys stable: a list is ``{"items": [...], "next_cursor":
..., "namespace": ...}`` (cli.render; the namespace it covers, null for
--all-namespaces), a trace is the JSON of ``LLMTrace`` (every field, times in RFC 3339
UTC) and the ``namespace`` it was stored under, a cost row names its group and each
figure.

Every subcommand works within one namespace (``--namespace``, default the
environment's), or every one with ``--all-namespaces``, and says which: in the table's
title (or the line that says nothing matched) and in the JSON.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any, Final

from psycopg_pool import ConnectionPool

from fleettrace.errors import ConfigurationError
from fleettrace.model import LLMTrace
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options, render
from fleettrace_worker.cli import tree as tree_cli
from fleettrace_worker.cli.durations import parse_time
from fleettrace_worker.cli.render import Column, Kind
from fleettrace_worker.store import migrations
from fleettrace_worker.store.attribute_filters import parse_meta
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.store.trace_filter import (
    GROUP_BY_FIELDS,
    CostRow,
    InvalidCursor,
    TraceFilter,
    check_group_by,
    decode_cursor,
)
from fleettrace_worker.store.tree_queries import TreeQueries

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 10_000
LIST_COLUMNS: Final = (
    Column("started_at", "STARTED", Kind.TIME),
    Column("trace_id", "TRACE ID", Kind.ID),
    Column("provider", "PROVIDER"),
    Column("model", "MODEL"),
    Column("actor", "ACTOR"),
    Column("plan_id", "PLAN"),
    Column("prompt_tokens", "TOKENS IN", Kind.COUNT),
    Column("completion_tokens", "TOKENS OUT", Kind.COUNT),
    Column("cost_usd", "COST", Kind.USD, "USD"),
    Column("latency_ms", "LATENCY", Kind.DURATION, "ms"),
    Column("error", "ERROR"),
)
COST_FIGURES: Final = (
    Column("calls", "CALLS", Kind.COUNT),
    Column("prompt_tokens", "PROMPT", Kind.COUNT, "tokens"),
    Column("completion_tokens", "COMPLETION", Kind.COUNT, "tokens"),
    Column("total_tokens", "TOTAL", Kind.COUNT, "tokens"),
    Column("cost_usd", "COST", Kind.USD, "USD"),
    Column("unpriced_calls", "UNPRICED", Kind.COUNT, "calls"),
    Column("unknown_token_calls", "UNKNOWN TOKENS", Kind.COUNT, "calls"),
    Column("error_rate", "ERRORS", Kind.PERCENT),
    Column("latency_p50_ms", "P50", Kind.DURATION, "ms"),
    Column("latency_p95_ms", "P95", Kind.DURATION, "ms"),
)
SHOW_COLUMNS: Final = (Column("field", "FIELD"), Column("value", "VALUE"))
#: Shown with --all-namespaces, where rows of several namespaces share a table.
NAMESPACE_COLUMN: Final = Column("namespace", "NAMESPACE")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "traces",
        help="list, show and sum up stored LLM calls",
        description="The LLM calls stored in PostgreSQL.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list",
        help="LLM calls newest first, one page at a time",
        description="LLM calls newest first (--sort orders the page shown). The last line "
        "says how many match, and, when more remain, the --cursor that shows the next page.",
    )
    _common(listing)
    _filters(listing)
    listing.add_argument(
        "--limit",
        type=options.WholeNumber(1, MAX_LIMIT),
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"calls per page (default {DEFAULT_LIMIT})",
    )
    listing.add_argument("--cursor", metavar="CURSOR", help="continue after a previous page")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser(
        "show",
        help="every field of one LLM call, and its ancestors in its plan tree",
        description="Every field of one LLM call. The table ends with its ancestors in its "
        "plan tree (root plan first, each with its cost and duration); --json prints the "
        "call alone, as `traces list --json` does (`traces tree PLAN_ID --json` for the tree).",
    )
    _common(show, listing=False)
    show.add_argument("trace_id", metavar="TRACE_ID", help="the call's trace id (a UUID)")
    show.set_defaults(handler=run_show)

    cost = actions.add_parser(
        "cost",
        help="calls, tokens, cost, error rate and latency per group",
        description="Sum up the selected calls per group, the most expensive first. Cost "
        "adds up the priced calls (unpriced when none was; null in --json); UNPRICED counts "
        "calls whose model has no known price or whose usage is unknown; UNKNOWN TOKENS "
        "counts calls whose provider reported no usage (left out of the token sums).",
    )
    _common(cost)
    _filters(cost)
    cost.add_argument(
        "--by",
        default="model",
        metavar="FIELDS",
        help=f"comma-separated, among {', '.join(GROUP_BY_FIELDS)} (default model)",
    )
    cost.set_defaults(handler=run_cost)
    tree_cli.register(actions, _common)


def _common(parser: argparse.ArgumentParser, *, listing: bool = True) -> None:
    options.add_database_options(parser, reads=True)
    options.add_data_dir_option(parser)
    options.add_namespace_option(parser, all_namespaces=True)
    if listing:
        render.add_output_options(parser)
    else:
        render.add_json_option(parser)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", metavar="NAME", help="only this provider")
    parser.add_argument("--model", metavar="NAME", help="only this model")
    parser.add_argument("--actor", metavar="NAME", help="only this actor")
    parser.add_argument("--plan", metavar="ID", help="only this plan")
    parser.add_argument(
        "--since", metavar="WHEN", help="started at or after: a time (ISO 8601) or an age (2h)"
    )
    parser.add_argument(
        "--until", metavar="WHEN", help="started before: a time (ISO 8601) or an age (30m)"
    )
    parser.add_argument("--errors", action="store_true", help="only calls that failed")
    parser.add_argument(
        "--tag", action="append", default=[], metavar="TAG", help="only calls with this tag "
        "(repeatable: calls with every tag given)",
    )  # fmt: skip
    parser.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="only calls whose "
        "metadata KEY is VALUE (tier=2 matches the number 2 and the string \"2\"; repeatable)",
    )  # fmt: skip
    parser.add_argument("--user", metavar="ID", help="only calls of this user_id")
    parser.add_argument("--session", metavar="ID", help="only calls of this session_id")


def _where(args: argparse.Namespace) -> TraceFilter:
    return TraceFilter(
        provider=args.provider,
        model=args.model,
        actor=args.actor,
        plan_id=args.plan,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        errors_only=args.errors,
        namespace=options.namespace_scope(args),
        tags=tuple(args.tag),
        metadata=tuple(_meta(text) for text in args.meta),
        user_id=args.user,
        session_id=args.session,
    )


def _meta(text: str) -> tuple[str, str]:
    try:
        return parse_meta(text)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


def _pool(args: argparse.Namespace) -> ConnectionPool:
    return migrations.pool_for_reading(options.reading_url(args))


def run_list(args: argparse.Namespace) -> int:
    where = _where(args)
    if args.cursor is not None:
        try:
            decode_cursor(args.cursor)
        except InvalidCursor as error:
            raise ConfigurationError(str(error)) from None
    columns = LIST_COLUMNS if where.namespace else (NAMESPACE_COLUMN, *LIST_COLUMNS)
    render.check_sort(args, columns)
    with _pool(args) as pool:
        repository = LLMTraceRepository(pool)
        page = repository.query(where, limit=args.limit, after=args.cursor)
        whole = page.next_cursor is None and args.cursor is None
        total = len(page.items) if whole or args.json else repository.count(where)
    footer = render.footer(len(page.items), total, "trace")
    if page.next_cursor:
        footer += f"; more: add --cursor {page.next_cursor}"
    scope = options.describe_scope(where.namespace)
    render.emit(
        args,
        columns,
        [_trace_json(t, ns) for t, ns in zip(page.items, page.namespaces, strict=True)],
        next_cursor=page.next_cursor,
        footer=footer,
        empty=f"no traces match in {scope}",
        title=f"LLM calls in {scope}",
        context={"namespace": where.namespace},
    )
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    try:
        trace_id = uuid.UUID(args.trace_id)
    except ValueError:
        raise ConfigurationError(f"{args.trace_id!r} is not a trace id (a UUID)") from None
    namespace = options.namespace_scope(args)
    with _pool(args) as pool:
        found = LLMTraceRepository(pool).get_stored(trace_id, namespace=namespace)
        placed = (
            TreeQueries(pool, namespace=namespace).ancestors(trace_id)
            if found is not None
            else None
        )
    if found is None:
        print(
            f"fleettrace traces: no trace with id {trace_id} in "
            f"{options.describe_scope(namespace)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    data = _trace_json(*found)
    chain = placed[1] if placed is not None else []
    if args.json:
        render.write_object(data)
        return EXIT_OK
    rows = [{"field": name, "value": _show_value(name, value)} for name, value in data.items()]
    if chain:
        rows.append({"field": "ancestors", "value": tree_cli.ancestors_line(chain)})
    render.print_table(SHOW_COLUMNS, rows)
    return EXIT_OK


def run_cost(args: argparse.Namespace) -> int:
    group_by = [name.strip() for name in args.by.split(",") if name.strip()]
    try:
        check_group_by(group_by)
    except ValueError as error:
        raise ConfigurationError(f"--by: {error}") from None
    columns = cost_columns(group_by)
    render.check_sort(args, columns)
    where = _where(args)
    with _pool(args) as pool:
        rows = LLMTraceRepository(pool).cost_summary(group_by, where)
    scope = options.describe_scope(where.namespace)
    render.emit(
        args,
        columns,
        [cost_json(row) for row in rows],
        footer=_cost_footer(rows),
        empty=f"no traces match in {scope}",
        title=f"cost in {scope}",
        context={"namespace": where.namespace},
    )
    return EXIT_OK


def cost_columns(group_by: list[str]) -> tuple[Column, ...]:
    """The group's names (a row's identity: cut last, never left out), then the figures."""
    return (*(Column(f"group.{name}", name.upper(), Kind.ID) for name in group_by), *COST_FIGURES)


def _cost_footer(rows: list[CostRow]) -> str:
    """The totals over every group: calls, and the cost of the priced ones."""
    calls = sum(row.calls for row in rows)
    priced = [row.cost_usd for row in rows if row.cost_usd is not None]
    unpriced = sum(row.unpriced_calls for row in rows)
    cost = render.format_usd(sum(priced) if priced else None)
    text = f"{render.count_of(len(rows), 'group')}, {render.count_of(calls, 'call')}, "
    text += f"{cost} USD" if priced else "no priced call"
    if unpriced:
        text += f" ({render.count_of(unpriced, 'call')} unpriced)"
    return text


def _trace_json(trace: LLMTrace, namespace: str | None) -> dict[str, Any]:
    """The record's fields and the namespace it was stored under (null: a row stored
    before schema version 3)."""
    return {**trace.model_dump(mode="json"), "namespace": namespace}


def _show_value(name: str, value: object) -> str:
    """Every field exactly as stored, on one line."""
    if value is None:
        return render.UNPRICED if name == "cost_usd" else render.UNKNOWN
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or render.UNKNOWN
    return str(value).replace("\n", "\\n")


def cost_json(row: CostRow) -> dict[str, Any]:
    """One group of a cost summary as ``--json`` prints it (and the tables show it)."""
    return {
        "group": row.group,
        "calls": row.calls,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.total_tokens,
        "cache_read_tokens": row.cache_read_tokens,
        "cache_write_tokens": row.cache_write_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "unknown_token_calls": row.unknown_token_calls,
        "cost_usd": row.cost_usd,
        "unpriced_calls": row.unpriced_calls,
        "error_rate": row.error_rate,
        "latency_p50_ms": row.latency_p50_ms,
        "latency_p95_ms": row.latency_p95_ms,
    }
