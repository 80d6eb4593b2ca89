"""``fleettrace worker``: run the sidecar (or, with ``--check``, probe one)."""

from __future__ import annotations

import argparse
import logging
import os

from fleettrace.keys import GROUPS, LANGSMITH_GROUP, MAX_ENTRY_BYTES, PERSIST_GROUP
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options
from fleettrace_worker.langsmith_settings import LangSmithSettings
from fleettrace_worker.runner import Worker, WorkerSettings, check_health


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="persist the streams to PostgreSQL (and forward to LangSmith)",
        description="Join the consumer groups and persist every record to PostgreSQL; with "
        "LANGCHAIN_TRACING_V2=true (or LANGSMITH_TRACING=true) also forward them to LangSmith. "
        "The first SIGTERM/SIGINT finishes the batch in hand and exits 0; a second exits at once.",
    )
    options.add_redis_options(parser)
    options.add_database_options(parser)
    parser.add_argument(
        "--consumer",
        metavar="NAME",
        help="consumer name, unique per worker process (default: $FLEETTRACE_WORKER_CONSUMER, "
        "else the host name)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="records to read and store per batch (default: 4000)",
    )
    parser.add_argument(
        "--block-ms",
        type=int,
        metavar="MS",
        help="how long one read waits for new entries (default: 1000)",
    )
    parser.add_argument(
        "--claim-idle-ms",
        type=int,
        metavar="MS",
        help="take over entries another consumer left pending this long (default: 30000)",
    )
    parser.add_argument(
        "--max-deliveries",
        type=int,
        metavar="N",
        help="dead-letter an entry delivered more often than this (default: 5)",
    )
    parser.add_argument(
        "--max-entry-bytes",
        type=int,
        metavar="N",
        help="dead-letter, undecoded, an entry whose data is larger than this "
        f"(default: {MAX_ENTRY_BYTES}, 4 MiB)",
    )
    parser.add_argument(
        "--burst", action="store_true", help="exit once the streams hold nothing new"
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /healthz, /readyz and /metrics there (e.g. 127.0.0.1:9464)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when the worker named --consumer reports itself ready, else 1 "
        "(a container health probe)",
    )
    parser.add_argument(
        "--only", choices=GROUPS, help="run this consumer group only (default: all enabled)"
    )
    parser.set_defaults(handler=run)


def selected_groups(only: str | None) -> tuple[str, ...]:
    if only is not None:
        return (only,)
    if LangSmithSettings.from_env().enabled:
        return (PERSIST_GROUP, LANGSMITH_GROUP)
    return (PERSIST_GROUP,)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get("FLEETTRACE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The pool warns at every failed connection attempt; the group loop already says
    # once per distinct error that it is waiting, and a refused login is one line.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    keys = options.keys(args)
    settings = WorkerSettings.from_env(
        options.redis_url(args),
        options.database_url(args),
        namespace=keys.namespace,
        consumer=args.consumer,
        groups=selected_groups(args.only),
        batch_records=args.batch,
        block_ms=args.block_ms,
        claim_idle_ms=args.claim_idle_ms,
        max_deliveries=args.max_deliveries,
        max_entry_bytes=args.max_entry_bytes,
        burst=args.burst or None,
        http=args.http,
    )
    if args.check:
        client = options.redis_client(args)
        return EXIT_OK if check_health(client, keys, settings.consumer) else EXIT_FAILURE
    return Worker(settings).run()
