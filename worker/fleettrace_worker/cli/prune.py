"""``fleettrace prune``: remove traces and metric samples older than a duration."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from fleettrace_worker import migrations, retention
from fleettrace_worker.cli import EXIT_OK, options, render
from fleettrace_worker.durations import parse_duration


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="remove rows older than a duration",
        description="Remove LLM traces that started, and metric samples observed, longer ago "
        "than --older-than. Rows go in small batches, each its own short transaction, so "
        "workers keep writing while it runs.",
    )
    options.add_database_options(parser)
    parser.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="age of the rows to remove: a whole number and s, m, h, d or w (30d, 12h)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count the rows that would go, remove nothing"
    )
    parser.add_argument(
        "--batch-rows",
        type=options.POSITIVE,
        default=retention.DEFAULT_BATCH_ROWS,
        metavar="N",
        help=f"rows per transaction (default {retention.DEFAULT_BATCH_ROWS})",
    )
    render.add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    age = parse_duration(args.older_than)
    cutoff = datetime.now(UTC) - age
    with migrations.pool_for_current_schema(options.database_url(args)) as pool:
        report = retention.prune(pool, cutoff, batch_rows=args.batch_rows, dry_run=args.dry_run)
    if args.json:
        render.write_object(
            {
                "dry_run": report.dry_run,
                "older_than": cutoff.isoformat(),
                "traces": report.traces,
                "samples": report.samples,
            }
        )
        return EXIT_OK
    verb = "would remove" if report.dry_run else "removed"
    print(
        f"{verb} {report.traces} traces and {report.samples} metric samples "
        f"older than {cutoff.isoformat(timespec='seconds')}"
    )
    return EXIT_OK
