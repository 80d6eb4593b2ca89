"""How long each of the dashboard's pages and API answers takes on a large database,
against the budget each is promised (``BUDGETS_MS``, the one place they are set).

    python -m benchmarks.dashboard_times [--calls 1000000] [--days 90] [--repeat 5]

Makes a database on the machine's PostgreSQL (``FLEETTRACE_BENCH_ADMIN_URL``, default
postgresql://postgres@127.0.0.1:5432/postgres), migrates it and fills it in SQL
(generate_series: the point is the read side, not the pipeline) with ``--calls`` calls
spread over ``--days``, in plans of 50 consecutive calls, each root plan with a child
plan (a fifth of its calls), three actors, tags (``prod``, ``dev`` and ``batch``, or
none), a user per plan (none for a fifth of them), time to first token on half the
calls; a tool call per five calls (four tools, one in 25 failed); both plan rows of
every tree; and a metric sample per three calls (context builds, index queries,
sandbox operations, tool durations). Then it serves the dashboard on a free loopback
port against it and a fresh Redis namespace, requests every URL of ``URLS``
``--repeat`` times, and prints the median and the slowest answer beside the budget:
PASS when the median is within it, else MISS. As comparators it prints the time of a
plain ``SELECT count(*)`` of the calls and of the 90-day cost table and series summed
from the raw rows (what they cost before the hourly rollup), and the date and the
load average, which these times depend on. The database and the namespace are removed
at the end; the exit status is 1 when any URL missed its budget.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

import psycopg
import redis

from fleettrace.keys import Keys
from fleettrace_worker.cli.dashboard import probe_routes
from fleettrace_worker.serve.dashboard import queries
from fleettrace_worker.serve.dashboard.app import DashboardSettings, build_app
from fleettrace_worker.serve.webserver import HttpServer
from fleettrace_worker.store import partitions
from fleettrace_worker.store.migrations import migrate

#: Calls per plan tree: the root plan's, then its child plan's (the last fifth).
PER_PLAN: Final = 50
#: One call of the fill (its trace id is uuid.UUID(int=CALL)) and one plan tree.
CALL: Final = 777 * PER_PLAN + 3
PLAN: Final = "plan-777"

FILL: Final = (
    """
    INSERT INTO llm_traces (trace_id, plan_id, decision_id, actor, provider, model,
        prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, tool_calls,
        streaming, retry_count, error, started_at, namespace, tags, user_id,
        root_plan_id, root_started_at, plan_path)
    SELECT lpad(to_hex(i), 32, '0')::uuid,
        CASE WHEN i %% %(per)s >= %(per)s * 4 / 5 THEN root || '/sub' ELSE root END,
        'd-' || i / 10,
        (ARRAY['planner', 'coder', 'reviewer'])[1 + i %% 3],
        (ARRAY['openai', 'anthropic', 'selfhosted'])[1 + i %% 3],
        (ARRAY['gpt-4o', 'claude-sonnet-4-5', 'house-llm', 'gpt-4o-mini'])[1 + i %% 4],
        100 + i %% 900, 20 + i %% 300,
        CASE WHEN i %% 3 = 2 THEN NULL ELSE (i %% 1000) / 100000.0 END,
        10 + i %% 2000, CASE WHEN i %% 2 = 0 THEN 5 + i %% 400 END, '{}', i %% 2 = 0,
        (i %% 7 = 0)::int, CASE WHEN i %% 50 = 0 THEN 'timeout' END, at, %(ns)s,
        CASE i %% 3 WHEN 0 THEN ARRAY['prod'] WHEN 1 THEN ARRAY['dev', 'batch']
            END,
        CASE WHEN i / %(per)s %% 5 <> 0 THEN 'user-' || i / %(per)s %% 200 END,
        root, root_at,
        CASE WHEN i %% %(per)s >= %(per)s * 4 / 5 THEN ARRAY[root] ELSE '{}' END
    FROM generate_series(0, %(calls)s - 1) AS i,
        LATERAL (SELECT 'plan-' || i / %(per)s AS root,
            %(now)s - make_interval(secs => (1 - i::float8 / %(calls)s) * %(days)s * 86400)
                AS at,
            %(now)s - make_interval(secs => (1 - (i / %(per)s * %(per)s)::float8
                / %(calls)s) * %(days)s * 86400) AS root_at) AS tree
    """,
    """
    INSERT INTO tool_calls (call_id, tool, plan_id, decision_id, actor, root_plan_id,
        root_started_at, plan_path, started_at, duration_ms, outcome, error, namespace)
    SELECT lpad(to_hex(i), 32, '0')::uuid,
        (ARRAY['search', 'fetch', 'book', 'exec'])[1 + i / 5 %% 4],
        'plan-' || i / %(per)s, 'd-' || i / 10, 'coder',
        'plan-' || i / %(per)s,
        %(now)s - make_interval(secs => (1 - (i / %(per)s * %(per)s)::float8
            / %(calls)s) * %(days)s * 86400),
        '{}',
        %(now)s - make_interval(secs => (1 - i::float8 / %(calls)s) * %(days)s * 86400),
        1 + i %% 700,
        CASE WHEN i %% 125 = 0 THEN 'error' ELSE 'ok' END,
        CASE WHEN i %% 125 = 0 THEN 'failed' END, %(ns)s
    FROM generate_series(0, %(calls)s - 1, 5) AS i
    """,
    """
    INSERT INTO plans (record_id, plan_id, parent_plan_id, root_plan_id,
        root_started_at, plan_path, started_at, ended_at, duration_ms, status,
        phases_ms, namespace)
    SELECT lpad(to_hex(2 * p + child), 32, '0')::uuid,
        CASE WHEN child = 1 THEN 'plan-' || p || '/sub' ELSE 'plan-' || p END,
        CASE WHEN child = 1 THEN 'plan-' || p END, 'plan-' || p, root_at,
        CASE WHEN child = 1 THEN ARRAY['plan-' || p] ELSE '{}' END,
        root_at + make_interval(secs => child * span * 0.8),
        root_at + make_interval(secs => span), span * (1 - child * 0.8) * 1000,
        CASE WHEN p %% 10 = 0 THEN 'error' ELSE 'ok' END, '{}', %(ns)s
    FROM generate_series(0, %(calls)s / %(per)s - 1) AS p, generate_series(0, 1) AS child,
        LATERAL (SELECT %(now)s - make_interval(secs => (1 - (p * %(per)s)::float8
            / %(calls)s) * %(days)s * 86400) AS root_at,
            %(per)s::float8 / %(calls)s * %(days)s * 86400 AS span) AS tree
    """,
    """
    INSERT INTO metric_samples (batch_id, position, key, labels, value, observed_at,
        namespace)
    SELECT lpad(to_hex(i / 100), 32, '0')::uuid, i %% 100,
        (ARRAY['context.build_duration_ms', 'index.query_duration_ms',
               'sandbox.operation_duration_ms', 'tool.invocation_duration_ms'])[1 + i %% 4],
        '{}', 1 + i %% 500,
        %(now)s - make_interval(secs => (1 - i::float8 / %(calls)s) * %(days)s * 86400),
        %(ns)s
    FROM generate_series(0, %(calls)s - 1, 3) AS i
    """,
)

_CALL_ID: Final = str(uuid.UUID(int=CALL))
#: Every URL timed, with its budget: the median of --repeat answers must be within it
#: (ms, on a million calls over 90 days). docs/dashboard.md states the same budgets.
BUDGETS_MS: Final = {
    "/api/live": 100,
    "/api/overview": 150,
    "/api/activity": 300,
    "/api/live/activity": 100,
    "/api/cost?by=model&range=24h": 300,
    "/api/cost?by=model&range=90d": 300,
    "/api/cost?by=tag&range=24h": 300,
    "/api/cost?by=user&range=24h": 300,
    "/api/cost?by=tag&range=7d": 1500,
    "/api/cost?by=user&range=7d": 1500,
    "/api/cost.csv?by=model&range=90d": 300,
    "/api/cost/series?by=model&range=24h": 300,
    "/api/cost/series?by=provider&range=90d": 300,
    "/api/performance?range=24h": 500,
    "/api/performance/series?range=24h": 500,
    "/api/performance/tools?range=24h": 300,
    "/api/performance/samples?range=24h": 300,
    "/api/performance?range=7d": 2000,
    "/api/plans?limit=100": 500,
    "/api/plans?q=plan-1234&limit=100": 500,
    "/api/plans?tag=prod&limit=100": 1000,
    "/api/plans?user=user-7&limit=100": 1000,
    "/api/plans?status=error&limit=100": 1000,
    "/api/plans?min_cost=0.2&limit=100": 1000,
    f"/api/plans/{PLAN}/tree": 500,
    f"/api/calls/{_CALL_ID}": 500,
    "/api/dlq?group=persist": 100,
    "/": 500,
    "/cost?range=24h": 500,
    "/cost?range=90d": 500,
    "/cost?by=tag&range=24h": 800,
    "/performance": 1000,
    "/plans": 500,
    "/plans?tag=prod": 1000,
    f"/plans/{PLAN}": 800,
    f"/calls/{_CALL_ID}": 500,
    "/dlq": 100,
}


def _time(url: str, repeat: int) -> tuple[float, float]:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=300) as answer:
            answer.read()
        took.append(time.perf_counter() - started)
    return statistics.median(took), max(took)


def _raw_s(url: str, namespace: str, repeat: int, *, series: bool) -> float:
    """The median time of the 90-day cost table (or chart series, by provider) summed
    from the raw rows, as they were read before the hourly rollup."""
    now = datetime.now(UTC)
    span = queries.TimeRange(now - timedelta(days=90), now, "90d")
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        if series:
            queries.cost_series(url, namespace, "provider", span, use_rollup=False)
        else:
            queries.cost_table(url, namespace, "model", span, 100, use_rollup=False)
        took.append(time.perf_counter() - started)
    return statistics.median(took)


def _fill(url: str, calls: int, days: int, namespace: str) -> float:
    """Fill the database; the seconds it took. Every row in the dashboard's namespace:
    schema 6 refuses a row without one."""
    started = time.perf_counter()
    bound = {"calls": calls, "days": days, "ns": namespace, "per": PER_PLAN}
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("SET synchronous_commit = off")
        bound["now"] = now = datetime.now(UTC)
        # One partition per day, as a worker running for the whole range would have made.
        partitions.ensure(conn, days_ahead=days + 2, today=now.date() - timedelta(days=days))
        for statement in FILL:
            conn.execute(statement, bound)
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    admin = os.environ.get(
        "FLEETTRACE_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"fleettrace_bench_{uuid.uuid4().hex[:10]}"
    keys = Keys(f"bench-{uuid.uuid4().hex[:10]}")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rsplit('/', 1)[0]}/{name}"
    missed = 0
    try:
        filled_s = _fill(url, args.calls, args.days, keys.namespace)
        with psycopg.connect(url, autocommit=True) as conn:
            counted = time.perf_counter()
            conn.execute("SELECT count(*) FROM llm_traces").fetchone()
            count_s = time.perf_counter() - counted
        print(f"filled {args.calls} calls over {args.days} days in {filled_s:.1f} s")
        print(f"comparator: SELECT count(*) FROM llm_traces {count_s * 1000:.0f} ms")
        for series, what in ((False, "cost by model"), (True, "cost series by provider")):
            raw_s = _raw_s(url, keys.namespace, args.repeat, series=series)
            print(f"comparator: {what} over 90 days from the raw rows {raw_s * 1000:.0f} ms")
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average (1, 5, 15 min): {load}")
        settings = DashboardSettings(args.redis_url, url, keys.namespace)
        server = HttpServer(build_app(probe_routes(args.redis_url, url), settings), "127.0.0.1", 0)
        try:
            print(f"{'URL':56} {'median ms':>10} {'max ms':>8} {'budget':>7}")
            for path, budget in BUDGETS_MS.items():
                median, slowest = _time(server.url + path, args.repeat)
                verdict = "PASS" if median * 1000 <= budget else "MISS"
                missed += verdict == "MISS"
                print(f"{path:56} {median * 1000:10.0f} {slowest * 1000:8.0f} {budget:7} {verdict}")
        finally:
            server.shutdown()
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average (1, 5, 15 min): {load}")
        print(f"{len(BUDGETS_MS) - missed} of {len(BUDGETS_MS)} within budget")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(match=f"{keys.prefix}*"):
            client.delete(key)
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
