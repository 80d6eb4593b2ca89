"""Options several subcommands share, and the argument types every subcommand uses.

Where Redis and PostgreSQL are, which namespace; and the number types (``WholeNumber``,
``Seconds``) that make argparse refuse a bad value with the flag's name
(``argument --batch: must be at least 1, got 0``) before anything runs, so a setting
never reaches the code that would name it by its field (``batch_records``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from fleettrace.cluster_settings import cluster_from_env
from fleettrace.connection import DEFAULT_REDIS_URL, connect_redis
from fleettrace.environment import NAMESPACE_VARIABLE, REDIS_CLUSTER_VARIABLE, redis_url_from_env
from fleettrace.errors import ConfigurationError
from fleettrace.keys import DEFAULT_NAMESPACE, MAX_SHARDS, Keys, configured_namespace
from fleettrace_worker.embedded import reopened_servers
from fleettrace_worker.store.settings import (
    DATABASE_READ_URL_VARIABLE,
    DEFAULT_DATABASE_URL,
    database_read_url_from_env,
    database_url_from_env,
)


@dataclass(frozen=True)
class WholeNumber:
    """An argparse type: a whole number from ``low`` to ``high`` (no upper bound if None)."""

    low: int = 1
    high: int | None = None

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < self.low or (self.high is not None and value > self.high):
            bounds = (
                f"between {self.low} and {self.high}"
                if self.high is not None
                else f"at least {self.low}"
            )
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value


@dataclass(frozen=True)
class Seconds:
    """An argparse type: a finite number of seconds above 0 (or 0 itself with
    ``zero_ok``, for limits where 0 means "none"), at most ``high`` if given."""

    high: float | None = None
    zero_ok: bool = False

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        too_low = value < 0 if self.zero_ok else value <= 0
        if not math.isfinite(value) or too_low or (self.high is not None and value > self.high):
            floor = "0 or more" if self.zero_ok else "more than 0"
            wanted = (
                (
                    "a number of seconds, 0 or more"
                    if self.zero_ok
                    else "a positive number of seconds"
                )
                if self.high is None
                else f"{floor} and at most {self.high:g} seconds"
            )
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value


#: A count of things the command handles or shows: 0 would mean "do nothing".
POSITIVE = WholeNumber(low=1)


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"Redis to use (default: $FLEETTRACE_REDIS_URL, $REDIS_URL, else {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        default=None,
        help=f"the URL is a seed node of a Redis Cluster (default: ${REDIS_CLUSTER_VARIABLE})",
    )
    add_namespace_option(parser)


def add_namespace_option(parser: argparse.ArgumentParser, *, all_namespaces: bool = False) -> None:
    """``--namespace NAME``: the one fleet a command works within (default: the
    environment's, as the emitters and the worker take it). With ``all_namespaces``,
    also ``--all-namespaces`` (exclusive with it), for reads and retention that may
    cover every fleet stored in one database. The name is checked when the command
    runs (:func:`keys`), so a bad one is the command's one-line error."""
    target = parser.add_mutually_exclusive_group() if all_namespaces else parser
    target.add_argument(
        "--namespace",
        metavar="NAME",
        help=f"the namespace to work within (default: ${NAMESPACE_VARIABLE}, "
        f"else {DEFAULT_NAMESPACE})",
    )
    if all_namespaces:
        target.add_argument(
            "--all-namespaces",
            action="store_true",
            help="every namespace in the database, rows stored before namespaces included",
        )


def namespace_scope(args: argparse.Namespace) -> str | None:
    """The namespace a command works within; None for --all-namespaces."""
    if getattr(args, "all_namespaces", False):
        return None
    return keys(args).namespace


def describe_scope(namespace: str | None) -> str:
    """How a title or footer names the scope: ``namespace 'x'`` or ``all namespaces``."""
    return "all namespaces" if namespace is None else f"namespace {namespace!r}"


def add_database_options(parser: argparse.ArgumentParser, *, reads: bool = False) -> None:
    """``--database-url``; with ``reads`` (a command that only reads, or serves
    reads), also ``--database-read-url``: a replica to read from."""
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL to use (default: $FLEETTRACE_DATABASE_URL, $DATABASE_URL, "
        f"else {DEFAULT_DATABASE_URL})",
    )
    if reads:
        parser.add_argument(
            "--database-read-url",
            metavar="URL",
            help=f"a read replica to read from (default: ${DATABASE_READ_URL_VARIABLE}, "
            "else the --database-url)",
        )


def add_data_dir_option(parser: argparse.ArgumentParser) -> None:
    """``--data-dir DIR``: read what ``fleettrace demo`` left in DIR, through its
    embedded servers started again for the command (:func:`servers_of`)."""
    parser.add_argument(
        "--data-dir",
        dest="reopen_dir",
        type=Path,
        metavar="DIR",
        help="read the data a `fleettrace demo` left in DIR (its embedded Redis and "
        "PostgreSQL, started for this command), instead of --redis-url/--database-url",
    )


@contextlib.contextmanager
def servers_of(args: argparse.Namespace) -> Iterator[None]:
    """With ``--data-dir``, the demo's embedded servers for the command's run, their URLs
    put in ``args`` (only those the command reads: it has their URL option); without
    it, nothing."""
    data_dir: Path | None = getattr(args, "reopen_dir", None)
    if data_dir is None:
        yield
        return
    wants_redis, wants_postgres = hasattr(args, "redis_url"), hasattr(args, "database_url")
    for wanted, flag in ((wants_redis, "redis_url"), (wants_postgres, "database_url")):
        if wanted and getattr(args, flag):
            raise ConfigurationError(
                f"--data-dir and --{flag.replace('_', '-')} both say where to read: give one"
            )
    with reopened_servers(data_dir, redis_data=wants_redis, postgres_data=wants_postgres) as urls:
        if wants_redis:
            args.redis_url = urls.redis_url
        if wants_postgres:
            args.database_url = urls.database_url
        yield


def redis_url(args: argparse.Namespace) -> str:
    return str(args.redis_url or redis_url_from_env() or DEFAULT_REDIS_URL)


def redis_cluster(args: argparse.Namespace) -> bool:
    """``--redis-cluster``, else ``FLEETTRACE_REDIS_CLUSTER``."""
    given = getattr(args, "redis_cluster", None)
    return bool(given) if given is not None else cluster_from_env()


def redis_client(args: argparse.Namespace) -> redis.Redis:
    return connect_redis(redis_url(args), cluster=redis_cluster(args))


def keys(args: argparse.Namespace) -> Keys:
    """The namespace's keys, in ``--shard`` where a command takes it (else shard 0)."""
    try:
        return Keys(args.namespace or configured_namespace(), shard=getattr(args, "shard", 0))
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


def add_shard_option(parser: argparse.ArgumentParser) -> None:
    """``--shard N``: which shard of a sharded namespace a command works in (the dead
    letters of each shard are its own, docs/scaling.md)."""
    parser.add_argument(
        "--shard",
        type=WholeNumber(low=0, high=MAX_SHARDS - 1),
        default=0,
        metavar="N",
        help="the shard of a sharded namespace to work in (default: 0)",
    )


def database_url(args: argparse.Namespace) -> str:
    return str(args.database_url or database_url_from_env() or DEFAULT_DATABASE_URL)


def database_read_url(args: argparse.Namespace) -> str | None:
    """The replica to read from: ``--database-read-url``, else
    ``$FLEETTRACE_DATABASE_READ_URL``, else None (read from the primary)."""
    given = getattr(args, "database_read_url", None)
    return str(given) if given else database_read_url_from_env()


def reading_url(args: argparse.Namespace) -> str:
    """Where a reading command reads: the replica when one is given, else the primary."""
    return database_read_url(args) or database_url(args)


def add_removal_options(parser: argparse.ArgumentParser, *, batch_rows: int) -> None:
    """``--dry-run`` and ``--batch-rows`` of the commands that delete rows in batches of
    short transactions (``prune``, ``erase``)."""
    parser.add_argument(
        "--dry-run", action="store_true", help="count the rows that would go, remove nothing"
    )
    parser.add_argument(
        "--batch-rows",
        type=POSITIVE,
        default=batch_rows,
        metavar="N",
        help=f"rows per transaction (default {batch_rows})",
    )


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
