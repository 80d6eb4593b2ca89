"""``fleettrace traces list|show|cost|tree``: the stored LLM calls, for people and scripts.

``--json`` output keeps its keys stable: a trace is the JSON of ``LLMTrace`` (every
field, times in RFC 3339 UTC), a cost row names its group and each figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any, Final

from psycopg_pool import ConnectionPool

from fleettrace.errors import ConfigurationError
from fleettrace.model import LLMTrace
from fleettrace_worker import migrations
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options
from fleettrace_worker.cli import tree as tree_cli
from fleettrace_worker.cli.tables import format_table
from fleettrace_worker.durations import parse_time
from fleettrace_worker.repository import (
    GROUP_BY_FIELDS,
    CostRow,
    InvalidCursor,
    LLMTraceRepository,
    TraceFilter,
    check_group_by,
    decode_cursor,
)
from fleettrace_worker.tree_queries import TreeQueries

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 10_000
_ERROR_CHARS: Final = 40
#: What a table shows for a cost nobody could price (never 0.000000, which says free).
UNPRICED: Final = "unpriced"
_LIST_HEADERS: Final = (
    "STARTED (UTC)",
    "TRACE ID",
    "PROVIDER",
    "MODEL",
    "ACTOR",
    "PLAN",
    "TOKENS",
    "COST USD",
    "LATENCY MS",
    "ERROR",
)
_COST_FIGURES: Final = (
    "CALLS",
    "PROMPT",
    "COMPLETION",
    "TOTAL TOKENS",
    "COST USD",
    "UNPRICED",
    "UNKNOWN TOKENS",
    "ERROR RATE",
    "P50 MS",
    "P95 MS",
)


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
        description="LLM calls newest first. When more remain, the last line gives the "
        "--cursor that shows the next page.",
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
    _common(show)
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


def _common(parser: argparse.ArgumentParser) -> None:
    options.add_database_options(parser)
    parser.add_argument("--json", action="store_true", help="JSON for scripts")


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


def _where(args: argparse.Namespace) -> TraceFilter:
    return TraceFilter(
        provider=args.provider,
        model=args.model,
        actor=args.actor,
        plan_id=args.plan,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        errors_only=args.errors,
    )


def _pool(args: argparse.Namespace) -> ConnectionPool:
    return migrations.pool_for_current_schema(options.database_url(args))


def run_list(args: argparse.Namespace) -> int:
    where = _where(args)
    if args.cursor is not None:
        try:
            decode_cursor(args.cursor)
        except InvalidCursor as error:
            raise ConfigurationError(str(error)) from None
    with _pool(args) as pool:
        page = LLMTraceRepository(pool).query(where, limit=args.limit, after=args.cursor)
    if args.json:
        print(
            json.dumps(
                {"items": [_trace_json(t) for t in page.items], "next_cursor": page.next_cursor}
            )
        )
        return EXIT_OK
    if not page.items:
        print("no traces match")
        return EXIT_OK
    print(format_table(_LIST_HEADERS, [_list_row(t) for t in page.items]))
    if page.next_cursor:
        print(f"more: add --cursor {page.next_cursor}")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    try:
        trace_id = uuid.UUID(args.trace_id)
    except ValueError:
        raise ConfigurationError(f"{args.trace_id!r} is not a trace id (a UUID)") from None
    with _pool(args) as pool:
        found = TreeQueries(pool).ancestors(trace_id)
    if found is None:
        print(f"fleettrace traces: no trace with id {trace_id}", file=sys.stderr)
        return EXIT_FAILURE
    trace, chain = found
    data = _trace_json(trace)
    if args.json:
        print(json.dumps(data))
        return EXIT_OK
    rows = [(name, _show_value(value)) for name, value in data.items()]
    if chain:
        rows.append(("ancestors", tree_cli.ancestors_line(chain)))
    print(format_table(("FIELD", "VALUE"), rows))
    return EXIT_OK


def run_cost(args: argparse.Namespace) -> int:
    group_by = [name.strip() for name in args.by.split(",") if name.strip()]
    try:
        check_group_by(group_by)
    except ValueError as error:
        raise ConfigurationError(f"--by: {error}") from None
    where = _where(args)
    with _pool(args) as pool:
        rows = LLMTraceRepository(pool).cost_summary(group_by, where)
    if args.json:
        print(json.dumps([_cost_json(row) for row in rows]))
        return EXIT_OK
    if not rows:
        print("no traces match")
        return EXIT_OK
    headers = (*(name.upper() for name in group_by), *_COST_FIGURES)
    print(format_table(headers, [_cost_cells(row, group_by) for row in rows]))
    return EXIT_OK


def _trace_json(trace: LLMTrace) -> dict[str, Any]:
    return trace.model_dump(mode="json")


def _show_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value).replace("\n", "\\n")


def _list_row(trace: LLMTrace) -> tuple[str, ...]:
    error = (trace.error or "-").replace("\n", " ")
    if len(error) > _ERROR_CHARS:
        error = error[: _ERROR_CHARS - 1] + "…"
    return (
        trace.started_at.strftime("%Y-%m-%d %H:%M:%S.%f"),
        str(trace.trace_id),
        trace.provider,
        trace.model,
        trace.actor or "-",
        trace.plan_id or "-",
        "unknown" if trace.total_tokens is None else str(trace.total_tokens),
        _cost(trace.cost_usd),
        f"{trace.latency_ms:.1f}",
        error,
    )


def _cost(value: float | None) -> str:
    return UNPRICED if value is None else f"{value:.6f}"


def _cost_cells(row: CostRow, group_by: list[str]) -> tuple[str, ...]:
    return (
        *(row.group[name] or "-" for name in group_by),
        str(row.calls),
        str(row.prompt_tokens),
        str(row.completion_tokens),
        str(row.total_tokens),
        # No priced call in the group: its cost is unknown, and 0.000000 would say free.
        _cost(row.cost_usd),
        str(row.unpriced_calls),
        str(row.unknown_token_calls),
        f"{row.error_rate:.1%}",
        f"{row.latency_p50_ms:.1f}",
        f"{row.latency_p95_ms:.1f}",
    )


def _cost_json(row: CostRow) -> dict[str, Any]:
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
