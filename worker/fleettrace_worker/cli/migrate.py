"""``fleettrace migrate``: bring the database schema to the version this code needs,
and load the batch function library into Redis (Redis 7+; agents call it with FCALL)."""

from __future__ import annotations

import argparse
import sys

import redis

from fleettrace.batch_script import load_library
from fleettrace.connection import connect_redis, redact_url
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
    options.add_redis_options(parser)
    parser.add_argument(
        "--no-redis",
        action="store_true",
        help="migrate the database only; do not load the batch function library into Redis",
    )
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
    if not args.no_redis:
        _load_library(options.redis_url(args))
    return EXIT_OK


def _load_library(url: str) -> None:
    """Load the function library; a Redis that cannot be reached is reported in one
    line (every worker loads the library at start too), not a failed migration."""
    client = connect_redis(url)
    try:
        if load_library(client):
            print("loaded the batch function library into Redis")
        else:
            print("Redis has no functions (before 7): emitters use the batch script there")
    except redis.RedisError as error:
        print(
            f"could not load the batch function library into Redis at {redact_url(url)}: "
            f"{type(error).__name__}; every worker loads it at start",
            file=sys.stderr,
        )
    finally:
        client.close()
