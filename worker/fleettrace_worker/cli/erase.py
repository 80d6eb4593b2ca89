"""``fleettrace erase --user ID | --session ID``: remove a person's stored rows."""

from __future__ import annotations

import argparse

from fleettrace.errors import ConfigurationError
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options, render
from fleettrace_worker.store import erasure, migrations

_COLUMNS = (
    render.Column("table", "TABLE", render.Kind.ID),
    render.Column("rows", "ROWS", render.Kind.COUNT),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "erase",
        help="remove every stored row of one user or one session",
        description="Remove the stored rows whose user_id (or session_id) is the one given, "
        "from every table that names a person, and say how many went from each. Asks for "
        "confirmation unless --yes; --dry-run only counts.",
    )
    options.add_database_options(parser)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="the user_id whose rows go")
    who.add_argument("--session", metavar="ID", help="the session_id whose rows go")
    options.add_removal_options(parser, batch_rows=erasure.DEFAULT_BATCH_ROWS)
    options.add_yes_option(parser)
    render.add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    who: erasure.Who = "user" if args.user is not None else "session"
    value: str = args.user if args.user is not None else args.session
    if not value:
        raise ConfigurationError(f"--{who} must name a {who} id, got an empty string")
    with migrations.pool_for_current_schema(options.database_url(args)) as pool:
        if not args.dry_run:
            question = f"Remove every stored row of {who} {value!r} for good?"
            if not options.confirm(question, yes=args.yes):
                print("nothing removed")
                return EXIT_FAILURE
        report = erasure.erase(pool, who, value, batch_rows=args.batch_rows, dry_run=args.dry_run)
    if args.json:
        render.write_object(
            {
                who: value,
                "dry_run": report.dry_run,
                "removed": report.removed,
                "total": report.total,
            }
        )
        return EXIT_OK
    verb = "would remove" if report.dry_run else "removed"
    items = [{"table": table, "rows": rows} for table, rows in report.removed.items()]
    render.print_table(
        _COLUMNS, items, footer=f"{verb} {render.count_of(report.total, 'row')} of {who} {value}"
    )
    return EXIT_OK
