"""Options several subcommands share: where Redis and PostgreSQL are, which namespace."""

from __future__ import annotations

import argparse
import sys

import redis

from fleettrace.connection import DEFAULT_REDIS_URL, connect_redis, redis_url_from_env
from fleettrace.errors import ConfigurationError
from fleettrace.keys import DEFAULT_NAMESPACE, NAMESPACE_VARIABLE, Keys, configured_namespace
from fleettrace_worker.settings import DEFAULT_DATABASE_URL, database_url_from_env


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"Redis to use (default: $FLEETTRACE_REDIS_URL, $REDIS_URL, else {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--namespace",
        metavar="NAME",
        help=f"key namespace (default: ${NAMESPACE_VARIABLE}, else {DEFAULT_NAMESPACE})",
    )


def add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL to use (default: $FLEETTRACE_DATABASE_URL, $DATABASE_URL, "
        f"else {DEFAULT_DATABASE_URL})",
    )


def redis_url(args: argparse.Namespace) -> str:
    return str(args.redis_url or redis_url_from_env() or DEFAULT_REDIS_URL)


def redis_client(args: argparse.Namespace) -> redis.Redis:
    return connect_redis(redis_url(args))


def keys(args: argparse.Namespace) -> Keys:
    try:
        return Keys(args.namespace or configured_namespace())
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


def database_url(args: argparse.Namespace) -> str:
    return str(args.database_url or database_url_from_env() or DEFAULT_DATABASE_URL)


def add_yes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true", help="do it without asking")


def confirm(question: str, *, yes: bool) -> bool:
    """``--yes``, or a ``y`` typed on stdin, for an action that cannot be undone.
    Anything else (a closed stdin included) is a no: a script that forgot ``--yes``
    deletes nothing."""
    if yes:
        return True
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def positive_int(text: str) -> int:
    """An argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value
