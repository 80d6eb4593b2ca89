"""``fleettrace migrate``: bring the database schema to the version this code needs,
and load the batch function library into Redis (Redis 7+; agents call it with FCALL)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import redis

from fleettrace.batch_script import load_library
from fleettrace.connection import connect_redis, redact_url
from fleettrace_worker.cli import EXIT_OK, options, render
from fleettrace_worker.store import database, migrations


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
    render.add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with database.connect(options.database_url(args)) as conn:
        if args.check:
            version = migrations.check_schema(conn)
            _say(args, f"schema is current at version {version}", {"version": version})
            return EXIT_OK
        result = migrations.migrate(conn)
    report: dict[str, Any] = {
        "from_version": result.from_version,
        "to_version": result.to_version,
        "applied": list(result.applied),
        "redis_library": "skipped",
    }
    if result.applied:
        line = (
            f"migrated schema from version {result.from_version} to {result.to_version} "
            f"(applied {', '.join(result.applied)})"
        )
    else:
        line = f"schema already at version {result.to_version}; nothing to apply"
    if not args.json:
        print(line)
    if not args.no_redis:
        report["redis_library"] = _load_library(options.redis_url(args), quiet=args.json)
    if args.json:
        render.write_object(report)
    return EXIT_OK


def _say(args: argparse.Namespace, text: str, data: dict[str, Any]) -> None:
    if args.json:
        render.write_object(data)
    else:
        print(text)


def _load_library(url: str, *, quiet: bool = False) -> str:
    """Load the function library; a Redis that cannot be reached is reported in one
    line (every worker loads the library at start too), not a failed migration.
    Returns what happened: ``loaded``, ``no functions`` (Redis before 7) or
    ``unreachable``; ``quiet`` leaves stdout to the caller's JSON."""
    client = connect_redis(url)
    try:
        if load_library(client):
            outcome, line = "loaded", "loaded the batch function library into Redis"
        else:
            outcome = "no functions"
            line = "Redis has no functions (before 7): emitters use the batch script there"
        if not quiet:
            print(line)
        return outcome
    except redis.RedisError as error:
        print(
            f"could not load the batch function library into Redis at {redact_url(url)}: "
            f"{type(error).__name__}; every worker loads it at start",
            file=sys.stderr,
        )
        return "unreachable"
    finally:
        client.close()
