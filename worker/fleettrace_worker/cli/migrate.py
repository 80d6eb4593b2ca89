"""``fleettrace migrate``: bring the database schema to the version this code needs."""

from __future__ import annotations

import argparse

from fleettrace_worker import database, migrations
from fleettrace_worker.cli import EXIT_OK, options


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="create or upgrade the PostgreSQL schema",
        description="Apply the schema migrations the database lacks. Safe to run twice and "
        "from several hosts at once: an advisory lock lets one apply them while the others "
        "wait and then find nothing left to do.",
    )
    options.add_database_options(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 0 when the schema is current, else say why and exit 1",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with database.connect(options.database_url(args)) as conn:
        if args.check:
            version = migrations.check_schema(conn)
            print(f"schema is current at version {version}")
            return EXIT_OK
        result = migrations.migrate(conn)
    if result.applied:
        print(
            f"migrated schema from version {result.from_version} to {result.to_version} "
            f"(applied {', '.join(result.applied)})"
        )
    else:
        print(f"schema already at version {result.to_version}; nothing to apply")
    return EXIT_OK
