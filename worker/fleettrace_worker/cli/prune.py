"""``fleettrace prune``: remove traces, metric samples, tool calls and plan records
older than a duration."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from fleettrace_worker.cli import EXIT_OK, options, render
from fleettrace_worker.cli.durations import parse_duration
from fleettrace_worker.store import migrations, retention


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="remove rows older than a duration",
        description="Remove LLM traces that started, and metric samples observed, longer ago "
        "than --older-than, in one namespace (--all-namespaces: in all). Rows go in small "
        "batches, each its own short transaction, so workers keep writing while it runs.",
    )
    options.add_database_options(parser)
    options.add_namespace_option(parser, all_namespaces=True)
    parser.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="age of the rows to remove: a whole number and s, m, h, d or w (30d, 12h)",
    )
    options.add_removal_options(parser, batch_rows=retention.DEFAULT_BATCH_ROWS)
    render.add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    age = parse_duration(args.older_than)
    cutoff = datetime.now(UTC) - age
    namespace = options.namespace_scope(args)
    with migrations.pool_for_reading(options.database_url(args)) as pool:
        report = retention.prune(
            pool, cutoff, batch_rows=args.batch_rows, dry_run=args.dry_run, namespace=namespace
        )
    if args.json:
        render.write_object(
            {
                "namespace": namespace,
                "dry_run": report.dry_run,
                "older_than": cutoff.isoformat(),
                "traces": report.traces,
                "samples": report.samples,
                "tool_calls": report.tool_calls,
                "plans": report.plans,
            }
        )
        return EXIT_OK
    verb = "would remove" if report.dry_run else "removed"
    print(
        f"{verb} {report.traces} traces and {report.samples} metric samples "
        f"older than {cutoff.isoformat(timespec='seconds')} in {options.describe_scope(namespace)} "
        f"(and {report.tool_calls} tool calls, {report.plans} plan records)"
    )
    return EXIT_OK
