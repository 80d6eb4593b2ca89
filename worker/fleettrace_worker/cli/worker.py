"""``fleettrace worker``: run the sidecar (or, with ``--check``, probe one)."""

from __future__ import annotations

import argparse
import logging
import sys

from fleettrace.errors import ConfigurationError
from fleettrace.keys import MAX_ENTRY_BYTES, MAX_SHARDS, Keys
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options, render
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.keys import (
    GROUPS,
    LANGSMITH_GROUP,
    METRICS_PLANS_MAX,
    OTLP_GROUP,
    PERSIST_GROUP,
)
from fleettrace_worker.presence import check_health, local_workers, runtime_dir
from fleettrace_worker.process import Worker
from fleettrace_worker.serve.dashboard.exposure import TOKEN_ENV, check_exposure, parse_address
from fleettrace_worker.settings import WorkerEnvironment, read_environment


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="persist the streams to PostgreSQL (and forward to LangSmith)",
        description="Join the consumer groups and persist every record to PostgreSQL; with "
        "LANGCHAIN_TRACING_V2=true (or LANGSMITH_TRACING=true) also forward them to LangSmith; "
        "with OTEL_EXPORTER_OTLP_ENDPOINT set, also export them as OTLP spans (docs/otlp.md). "
        "The first SIGTERM/SIGINT finishes the batch in hand and exits 0; a second exits at once.",
    )
    options.add_redis_options(parser)
    options.add_database_options(parser, reads=True)
    parser.add_argument(
        "--consumer",
        metavar="NAME",
        help="consumer name, unique per worker process (default: $FLEETTRACE_WORKER_CONSUMER, "
        "else <host name>-<pid>)",
    )
    parser.add_argument(
        "--batch",
        type=options.POSITIVE,
        metavar="N",
        help="records to read and store per batch (default: 4000)",
    )
    parser.add_argument(
        "--block-ms",
        type=options.WholeNumber(low=0),
        metavar="MS",
        help="how long one read waits for new entries (default: 1000)",
    )
    parser.add_argument(
        "--claim-idle-ms",
        type=options.POSITIVE,
        metavar="MS",
        help="take over entries another consumer left pending this long (default: 30000)",
    )
    parser.add_argument(
        "--max-deliveries",
        type=options.POSITIVE,
        metavar="N",
        help="dead-letter an entry delivered more often than this (default: 5)",
    )
    parser.add_argument(
        "--max-entry-bytes",
        type=options.POSITIVE,
        metavar="N",
        help="dead-letter, undecoded, an entry whose data is larger than this "
        f"(default: {MAX_ENTRY_BYTES}, 4 MiB)",
    )
    parser.add_argument(
        "--burst", action="store_true", help="exit once the streams hold nothing new"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="on exit, print what each group did as one JSON object (logs stay on stderr)",
    )
    parser.add_argument(
        "--group-max-lag",
        type=options.WholeNumber(low=0),
        metavar="N",
        help="warn when a consumer group has more undelivered entries than this "
        "(default: $FLEETTRACE_WORKER_GROUP_MAX_LAG, else 100000; 0: never)",
    )
    parser.add_argument(
        "--group-max-age-s",
        type=options.Seconds(zero_ok=True),
        metavar="S",
        help="warn when the oldest entry a group still needs is older than this "
        "(default: $FLEETTRACE_WORKER_GROUP_MAX_AGE_S, else 3600; 0: never)",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /healthz, /readyz and /metrics there (e.g. 127.0.0.1:9464)",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="also serve the dashboard's pages and /api/ on the --http address "
        f"(beyond loopback only with ${TOKEN_ENV} set; docs/dashboard.md)",
    )
    parser.add_argument(
        "--metrics-plans",
        type=options.WholeNumber(low=0, high=METRICS_PLANS_MAX),
        metavar="N",
        help="export the N costliest plans on /metrics with a plan label (default: "
        f"$FLEETTRACE_WORKER_METRICS_PLANS, else 0, at most {METRICS_PLANS_MAX})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when the workers running on this host (or the one named --consumer) "
        "report themselves ready, else 1 (a container health probe)",
    )
    parser.add_argument(
        "--only", choices=GROUPS, help="run this consumer group only (default: all enabled)"
    )
    parser.add_argument(
        "--shards",
        type=options.WholeNumber(low=0, high=MAX_SHARDS - 1),
        nargs="+",
        metavar="N",
        help="read only these shards of a sharded namespace, e.g. --shards 0 2 (default: "
        "every shard found on any master, new ones included; docs/scaling.md)",
    )
    parser.set_defaults(handler=run)


def selected_groups(only: str | None, env: WorkerEnvironment | None = None) -> tuple[str, ...]:
    if only is not None:
        return (only,)
    env = env if env is not None else read_environment()
    groups: tuple[str, ...] = (PERSIST_GROUP,)
    if env.langsmith.enabled:
        groups += (LANGSMITH_GROUP,)
    if env.otlp.enabled:
        groups += (OTLP_GROUP,)
    return groups


def run(args: argparse.Namespace) -> int:
    env = read_environment()
    logging.basicConfig(
        level=env.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The pool warns at every failed connection attempt; the group loop already says
    # once per distinct error that it is waiting, and a refused login is one line.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    keys = options.keys(args)
    token = env.dashboard.token_value()
    if args.dashboard:
        if args.http is None:
            raise ConfigurationError("--dashboard needs --http HOST:PORT to serve it on")
        check_exposure(parse_address(args.http)[0], token)
    settings = WorkerSettings.from_environment(
        env,
        options.redis_url(args),
        options.database_url(args),
        database_read_url=options.database_read_url(args),
        namespace=keys.namespace,
        consumer=args.consumer,
        groups=selected_groups(args.only, env),
        batch_records=args.batch,
        block_ms=args.block_ms,
        claim_idle_ms=args.claim_idle_ms,
        max_deliveries=args.max_deliveries,
        group_max_lag=args.group_max_lag,
        group_max_age_s=args.group_max_age_s,
        max_entry_bytes=args.max_entry_bytes,
        shards=None if args.shards is None else tuple(sorted(set(args.shards))),
        burst=args.burst or None,
        http=args.http,
        dashboard=args.dashboard or None,
        dashboard_token=token,
        metrics_plans=args.metrics_plans,
        runtime_dir=str(runtime_dir()),
        redis_cluster=args.redis_cluster,
    )
    if args.check:
        return _check(args, settings, named=bool(args.consumer or env.worker.consumer))
    worker = Worker(settings)
    code = worker.run()
    if args.json:
        render.write_object(summary(worker, code))
    return code


def summary(worker: Worker, code: int) -> dict[str, object]:
    """What a worker did before it exited: per group the records, entries, batches,
    dead letters and retries it handled (a burst's report, for scripts)."""
    return {
        "consumer": worker.settings.consumer,
        "namespace": worker.settings.namespace,
        "exit_code": code,
        "groups": worker.health()["groups"],
    }


def _check(args: argparse.Namespace, settings: WorkerSettings, *, named: bool) -> int:
    """The named worker, else every worker of this host (their runtime files): all of
    them ready, and at least one."""
    client = options.redis_client(args)
    if named:
        named = check_health(client, Keys(settings.namespace), settings.consumer)
        return EXIT_OK if named else EXIT_FAILURE
    directory = runtime_dir()
    workers = local_workers(directory)
    if not workers:
        print(f"fleettrace worker: no worker runs here (nothing in {directory})", file=sys.stderr)
        return EXIT_FAILURE
    not_ready = [w for w in workers if not check_health(client, Keys(w.namespace), w.consumer)]
    for worker in not_ready:
        print(f"fleettrace worker: {worker.consumer} is not ready", file=sys.stderr)
    return EXIT_FAILURE if not_ready else EXIT_OK
