"""``fleettrace demo``: a simulated fleet on the configured servers, else embedded ones.

Without ``FLEETTRACE_REDIS_URL``/``REDIS_URL`` (or ``--redis-url``) an embedded Redis
is started, without ``FLEETTRACE_DATABASE_URL``/``DATABASE_URL`` (or
``--database-url``) an embedded PostgreSQL, both under the data directory. The
dashboard is served from the start (its URL is printed). The exit code says whether
every record sent is a row or a dead letter.

Run from a terminal (stdin and stdout), the demo does not exit after its proof: the
dashboard, the servers and a worker stay up, with a few agents running a plan now and
then, until Ctrl-C (exit 0). ``--exit``, ``--json`` or no terminal (CI, scripts,
tests) exit after the proof.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options, render
from fleettrace_worker.cli.dashboard import DEFAULT_HOST, DEFAULT_PORT, probe_routes
from fleettrace_worker.cli.render import Column, Kind
from fleettrace_worker.cli.traces import COST_FIGURES, cost_json
from fleettrace_worker.demo.accounting import DemoResult, Progress
from fleettrace_worker.demo.settings import DRAIN_TIMEOUT_S, DemoSettings, new_run_id
from fleettrace_worker.embedded import ServerUrls, data_dir_from_env, embedded_servers
from fleettrace_worker.settings import DATA_DIR_VARIABLE, read_environment
from fleettrace_worker.store import database

if TYPE_CHECKING:
    from fleettrace_worker.serve.webserver import HttpServer

#: Without a terminal, one progress line per this many seconds.
PLAIN_PROGRESS_INTERVAL_S: Final = 1.0
MAX_AGENTS: Final = 64
#: Width of the output when it goes to a file or a pipe (rich would assume 80).
WIDE_OUTPUT_COLUMNS: Final = 120
MAX_REASONS_SHOWN: Final = 5
#: Upper bound of --seconds and --drain-timeout: a demo, not a soak test.
MAX_SECONDS: Final = 3600.0
#: The closing cost table: the figures of ``traces cost --by model``, in its look.
COST_COLUMNS: Final = (
    Column("group.model", "MODEL", Kind.ID),
    *(
        column
        for column in COST_FIGURES
        if column.key
        in (
            "calls",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "error_rate",
            "latency_p50_ms",
            "latency_p95_ms",
        )
    ),
)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """A closed reader ends the demo as it ends every command (``cli.main``: exit 141);
        rich's own handling would exit 1, which reads as "records missing"."""
        raise BrokenPipeError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a simulated fleet and a worker, and prove nothing was lost",
        description="Run several agent processes that record plans, actors and tools "
        "through the hooks and their LLM calls through wrap_openai (against a local "
        "OpenAI-compatible server the demo starts), a worker that stores them, a live "
        "progress display, and the cost summary by model. With no Redis or PostgreSQL URL "
        "configured, embedded servers run under the data directory. Exits 0 only if "
        "records sent = rows stored + dead letters.",
    )
    options.add_redis_options(parser)
    options.add_database_options(parser)
    parser.add_argument(
        "--agents",
        type=options.WholeNumber(1, MAX_AGENTS),
        default=4,
        metavar="N",
        help="agent processes (default: 4)",
    )
    parser.add_argument(
        "--plans",
        type=options.POSITIVE,
        default=25,
        metavar="N",
        help="plans per agent (default: 25)",
    )
    parser.add_argument(
        "--seconds",
        type=options.Seconds(MAX_SECONDS),
        metavar="S",
        help="let each agent run plans for S seconds instead of --plans",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"where embedded servers keep their data (default: ${DATA_DIR_VARIABLE}, "
        "else ./.fleettrace)",
    )
    parser.add_argument(
        "--malformed",
        type=options.WholeNumber(0, 1000),
        default=2,
        metavar="N",
        help="records to write past the emitter, every other one invalid, to show the "
        "dead-letter path (default: 2)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=options.Seconds(MAX_SECONDS),
        default=DRAIN_TIMEOUT_S,
        metavar="S",
        help=f"how long to wait for the last records to be stored (default: {DRAIN_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="store nothing here: a worker sidecar on the same namespace does it",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the run's report as one JSON object on stdout (progress goes to stderr)",
    )
    parser.add_argument(
        "--exit",
        action="store_true",
        help="exit after the proof also on a terminal (without a terminal it always does)",
    )
    parser.add_argument(
        "--port",
        type=options.WholeNumber(low=0, high=65535),
        metavar="PORT",
        help=f"the dashboard's port on {DEFAULT_HOST} (default: {DEFAULT_PORT}, or any free "
        "port when that one is taken; 0: any free port)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if options.redis_cluster(args):
        raise ConfigurationError("fleettrace demo runs on one Redis, not on a Redis Cluster")
    env = read_environment()
    redis_url = args.redis_url or env.redis_url
    database_url = args.database_url or env.database_url
    data_dir = args.data_dir or data_dir_from_env()
    run_id = new_run_id()
    namespace = args.namespace or env.namespace or run_id
    try:
        Keys(namespace)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    # No markup: dead-letter reasons and URLs may hold square brackets.
    # With --json, stdout holds the report alone; what a person watches goes to stderr.
    out = sys.stderr if args.json else sys.stdout
    console = _Console(
        file=out,
        highlight=False,
        markup=False,
        width=None if out.isatty() else WIDE_OUTPUT_COLUMNS,
    )
    if redis_url is None or database_url is None:
        console.print(f"Starting embedded servers under {data_dir} ...")
    stays = not (args.exit or args.json) and sys.stdin.isatty() and sys.stdout.isatty()
    with embedded_servers(data_dir, redis_url=redis_url, database_url=database_url) as urls:
        for line in urls.embedded:
            console.print(f"  {line}")
        dashboard = _serve_dashboard(urls, namespace, args.port)
        try:
            return _run_and_report(
                args,
                console,
                urls,
                namespace=namespace,
                run_id=run_id,
                dashboard=dashboard,
                stays=stays,
            )
        finally:
            dashboard.shutdown()


def _run_and_report(
    args: argparse.Namespace,
    console: Console,
    urls: ServerUrls,
    *,
    namespace: str,
    run_id: str,
    dashboard: HttpServer,
    stays: bool,
) -> int:
    """The fleet, the proof and the report; then, on a terminal, the live phase."""
    console.print(f"Dashboard: {dashboard.url}/")
    settings = DemoSettings(
        redis_url=urls.redis_url,
        database_url=urls.database_url,
        namespace=namespace,
        agents=args.agents,
        plans=args.plans,
        seconds=args.seconds,
        run_worker=not args.no_worker,
        run_id=run_id,
        drain_timeout_s=args.drain_timeout,
        malformed=args.malformed,
    )
    what = (
        f"{settings.plans} plans each"
        if settings.seconds is None
        else (f"{settings.seconds:g} s each")
    )
    console.print(
        f"Run {settings.run_id}: {settings.agents} agent processes, {what}, namespace {namespace!r}"
    )
    console.print(
        "  the agents' LLM calls go through wrap_openai(OpenAI(...)) to a local "
        "OpenAI-compatible server"
    )
    # The demo's fleet (openai, the embedded servers) loads only for this command:
    # every other command, the worker above all, starts without it.
    from fleettrace_worker.demo.run import run_demo  # noqa: PLC0415

    with _display(console) as show:
        result = run_demo(settings, show)
    if args.json:
        render.write_object(report_json(result))
    else:
        _report(console, result)
    if urls.embedded:
        console.print(
            "To look again after the demo: fleettrace dashboard --data-dir "
            f"{args.data_dir or data_dir_from_env()} --namespace {namespace}"
        )
    code = EXIT_OK
    if not result.nothing_lost:
        missing = result.sent - result.stored - result.dead_letters
        console.print(
            f"{missing} records are neither rows nor dead letters "
            f"(after waiting {settings.drain_timeout_s:g} s)",
            style="bold red",
        )
        code = EXIT_FAILURE
    if stays:
        _stay_live(console, settings, dashboard)
    return code


def _serve_dashboard(urls: ServerUrls, namespace: str, port: int | None) -> HttpServer:
    """The dashboard on loopback: ``port``, else the default one, else (taken) any."""
    # The web stack loads only for the demo (and `fleettrace dashboard`).
    from fleettrace_worker.serve.dashboard.app import DashboardSettings, build_app  # noqa: PLC0415
    from fleettrace_worker.serve.webserver import HttpServer  # noqa: PLC0415

    # A URL that is no PostgreSQL URL is said as the run would say it.
    database.parse_url(urls.database_url)
    settings = DashboardSettings(urls.redis_url, urls.database_url, namespace)
    app = build_app(probe_routes(urls.redis_url, urls.database_url), settings)
    try:
        return HttpServer(app, DEFAULT_HOST, DEFAULT_PORT if port is None else port)
    except ConfigurationError:
        if port is not None:
            raise
        return HttpServer(app, DEFAULT_HOST, 0)


def _stay_live(console: Console, settings: DemoSettings, dashboard: HttpServer) -> None:
    """Keep the dashboard, the servers and a trickle of plans up until Ctrl-C or SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    console.print(
        f"The dashboard stays up at {dashboard.url}/ with new plans arriving now and "
        "then; Ctrl-C to stop."
    )
    try:
        from fleettrace_worker.demo.run import keep_live  # noqa: PLC0415

        plans = keep_live(settings, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print(f"fleettrace demo: stopped ({plans} more plans since the proof)")


def report_json(result: DemoResult) -> dict[str, object]:
    """The report of ``_report`` for scripts: the figures of the proof and the cost by
    model in the one list shape."""
    return {
        "run_id": result.settings.run_id,
        "namespace": result.settings.namespace,
        "agents": len(result.agents),
        "plans": sum(agent.plans for agent in result.agents),
        "records_sent": result.sent,
        "written_past_emitter": result.handwritten,
        "dropped": result.dropped,
        "rows_stored": result.stored,
        "traces_stored": result.traces_stored,
        "samples_stored": result.samples_stored,
        "tree_rows_stored": result.tree_stored,
        "dead_letters": result.dead_letters,
        "dead_letter_reasons": list(result.dead_letter_reasons),
        "nothing_lost": result.nothing_lost,
        "elapsed_s": round(result.elapsed_s, 3),
        "cost_by_model": {"items": [cost_json(row) for row in result.costs], "next_cursor": None},
    }


def _progress_table(progress: Progress) -> Table:
    table = Table(title="fleettrace demo: live", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("agents running", f"{progress.agents_running}")
    table.add_row("records sent", f"{progress.sent:,}")
    table.add_row(
        "rows stored",
        f"{progress.stored:,} ({progress.traces_stored:,} traces, "
        f"{progress.samples_stored:,} metric samples, {progress.tree_stored:,} tool calls "
        "and plan records)",
    )
    table.add_row("dead letters", f"{progress.dead_letters:,}")
    table.add_row("in flight", f"{progress.in_flight:,}")
    table.add_row("cost so far", f"${progress.cost_usd:,.4f}")
    table.add_row("LLM errors / retries", f"{progress.llm_errors:,} / {progress.llm_retries:,}")
    return table


def _plain_line(progress: Progress) -> str:
    return (
        f"agents running {progress.agents_running}, sent {progress.sent}, "
        f"stored {progress.stored}, dead letters {progress.dead_letters}, "
        f"in flight {progress.in_flight}, cost ${progress.cost_usd:.4f}"
    )


@contextmanager
def _display(console: Console) -> Iterator[Callable[[Progress], None]]:
    """A live table on a terminal; elsewhere (logs, CI) a plain line now and then."""
    if console.is_terminal:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            yield lambda progress: live.update(_progress_table(progress))
        return
    last = [0.0]

    def show(progress: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= PLAIN_PROGRESS_INTERVAL_S:
            last[0] = now
            console.print(_plain_line(progress))

    yield show


def _report(console: Console, result: DemoResult) -> None:
    namespace = result.settings.namespace
    render.print_table(
        COST_COLUMNS,
        [cost_json(row) for row in result.costs],
        title=f"Cost by model (stored in PostgreSQL, namespace {namespace!r})",
        empty="no LLM calls stored",
        console=console,
    )
    console.print(
        f"namespace {namespace!r}: its rows show only there "
        f"(fleettrace traces cost --namespace {namespace})"
    )
    console.print(
        f"records sent: {result.sent} ({result.sent - result.handwritten} by "
        f"{len(result.agents)} agent processes in {sum(a.plans for a in result.agents)} plans, "
        f"{result.handwritten} written past the emitter; dropped by the emitters: "
        f"{result.dropped})"
    )
    console.print(
        f"rows stored: {result.stored} ({result.traces_stored} llm_traces + "
        f"{result.samples_stored} metric_samples + {result.tree_stored} tool_calls and plans)"
    )
    console.print(f"dead letters: {result.dead_letters}")
    for reason in result.dead_letter_reasons[:MAX_REASONS_SHOWN]:
        console.print(f"  dead letter: {reason}")
    verdict = "nothing lost" if result.nothing_lost else "RECORDS MISSING"
    console.print(
        f"records sent = rows stored + dead letters: {result.sent} "
        f"{'=' if result.nothing_lost else '!='} {result.stored} + {result.dead_letters} "
        f"({verdict}, {result.elapsed_s:.1f} s)"
    )
