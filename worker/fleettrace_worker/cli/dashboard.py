"""``fleettrace dashboard``: serve the dashboard's pages and /api/ (docs/dashboard.md).

The same pages a worker serves with ``--http HOST:PORT --dashboard``, on their own:
``/healthz`` answers while the process serves, ``/readyz`` when Redis and PostgreSQL
answer; ``/metrics`` stays the worker's. Binding beyond loopback needs
``FLEETTRACE_DASHBOARD_TOKEN`` (the command refuses in one line without it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Final

import psycopg
import redis
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from fleettrace.connection import connect_redis
from fleettrace_worker.cli import EXIT_OK, options
from fleettrace_worker.serve.dashboard.access import TOKEN_ENV, check_exposure
from fleettrace_worker.serve.dashboard.api import unavailable
from fleettrace_worker.serve.dashboard.app import DashboardSettings, build_app
from fleettrace_worker.serve.webserver import HttpServer
from fleettrace_worker.settings import DashboardEnvironment

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8465


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard (live counters, cost, plans, dead letters)",
        description="Serve the dashboard's pages and its JSON API under /api/. It binds to "
        f"{DEFAULT_HOST} by default; any other address needs ${TOKEN_ENV}, which the pages "
        "and /api/ then ask for. Ctrl-C stops it.",
    )
    options.add_redis_options(parser)
    options.add_database_options(parser, reads=True)
    options.add_data_dir_option(parser)
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=options.WholeNumber(low=0, high=65535),
        default=DEFAULT_PORT,
        help=f"port to listen on (default: {DEFAULT_PORT}; 0: any free port)",
    )
    parser.set_defaults(handler=run)


def probe_routes(
    redis_url: str, database_url: str, *, redis_cluster: bool = False
) -> list[BaseRoute]:
    """``/healthz`` and a ``/readyz`` that asks Redis and PostgreSQL."""

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def readyz(request: Request) -> Response:
        try:
            client = connect_redis(redis_url, cluster=redis_cluster)
            try:
                client.ping()
            finally:
                client.close()
            with psycopg.connect(database_url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except (redis.RedisError, psycopg.Error) as error:
            return PlainTextResponse(f"not ready: {unavailable(error)[0]}\n", status_code=503)
        return PlainTextResponse("ready\n")

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


def run(args: argparse.Namespace) -> int:
    token = DashboardEnvironment.read().token_value()
    check_exposure(args.host, token)
    keys = options.keys(args)
    settings = DashboardSettings(
        options.redis_url(args),
        options.database_url(args),
        keys.namespace,
        token,
        options.redis_cluster(args),
        read_url=options.database_read_url(args),
    )
    probes = probe_routes(
        settings.redis_url, settings.reading_url, redis_cluster=settings.redis_cluster
    )
    app = build_app(probes, settings)
    server = HttpServer(app, args.host, args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"fleettrace dashboard: serving {server.url}/ (Ctrl-C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
    print("fleettrace dashboard: stopped", file=sys.stderr)
    return EXIT_OK
