"""``fleettrace traces list|show|cost``: the stored LLM calls, for people and scripts.

``--json`` output keeps its keys stable: a list is ``{"items": [...], "next_cursor":
...}`` (cli.render), a trace is the JSON of ``LLMTrace`` (every field, times in RFC 3339
UTC), a cost row names its group and each figure.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any, Final

from psycopg_pool import ConnectionPool

from fleettrace.errors import ConfigurationError
from fleettrace.model import LLMTrace
from fleettrace_worker import migrations
from fleettrace_worker.attribute_filters import parse_meta
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options, render
from fleettrace_worker.cli.render import Column, Kind
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

    show = actions.add_parser("show", help="every field of one LLM call")
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


def _common(parser: argparse.ArgumentParser, *, listing: bool = True) -> None:
    options.add_database_options(parser)
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
    return migrations.pool_for_current_schema(options.database_url(args))


def run_list(args: argparse.Namespace) -> int:
    where = _where(args)
    if args.cursor is not None:
        try:
            decode_cursor(args.cursor)
        except InvalidCursor as error:
            raise ConfigurationError(str(error)) from None
    render.check_sort(args, LIST_COLUMNS)
    with _pool(args) as pool:
        repository = LLMTraceRepository(pool)
        page = repository.query(where, limit=args.limit, after=args.cursor)
        whole = page.next_cursor is None and args.cursor is None
        total = len(page.items) if whole or args.json else repository.count(where)
    footer = render.footer(len(page.items), total, "trace")
    if page.next_cursor:
        footer += f"; more: add --cursor {page.next_cursor}"
    render.emit(
        args,
        LIST_COLUMNS,
        [_trace_json(t) for t in page.items],
        next_cursor=page.next_cursor,
        footer=footer,
        empty="no traces match",
    )
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    try:
        trace_id = uuid.UUID(args.trace_id)
    except ValueError:
        raise ConfigurationError(f"{args.trace_id!r} is not a trace id (a UUID)") from None
    with _pool(args) as pool:
        trace = LLMTraceRepository(pool).get(trace_id)
    if trace is None:
        print(f"fleettrace traces: no trace with id {trace_id}", file=sys.stderr)
        return EXIT_FAILURE
    data = _trace_json(trace)
    if args.json:
        render.write_object(data)
        return EXIT_OK
    rows = [{"field": name, "value": _show_value(name, value)} for name, value in data.items()]
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
    render.emit(
        args,
        columns,
        [cost_json(row) for row in rows],
        footer=_cost_footer(rows),
        empty="no traces match",
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


def _trace_json(trace: LLMTrace) -> dict[str, Any]:
    return trace.model_dump(mode="json")


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
