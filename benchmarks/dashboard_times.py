"""How long the dashboard's pages and API answers take on a large ``llm_traces``.

    python -m benchmarks.dashboard_times [--calls 1000000] [--days 90] [--repeat 5]

Makes a database on the machine's PostgreSQL (``FLEETTRACE_BENCH_ADMIN_URL``, default
postgresql://postgres@127.0.0.1:5432/postgres), migrates it, fills ``llm_traces`` with
``--calls`` rows spread over ``--days`` (generate_series in SQL: the point is the read
side, not the pipeline), serves the dashboard on a free loopback port against it and a
fresh Redis namespace, and prints the median and the slowest of ``--repeat`` requests
per URL. As comparators it prints the time of the plain ``SELECT count(*)`` of the same
table, and of the 90-day cost table summed from the raw rows (what ``/api/cost`` read
before the hourly rollup), in the same run; and the date and the machine's load
average, which these times depend on. The database and the namespace are removed at
the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import redis

from fleettrace.keys import Keys
from fleettrace_worker.cli.dashboard import probe_routes
from fleettrace_worker.serve.dashboard import queries
from fleettrace_worker.serve.dashboard.app import DashboardSettings, build_app
from fleettrace_worker.serve.webserver import HttpServer
from fleettrace_worker.store.migrations import migrate

FILL = """
INSERT INTO llm_traces (trace_id, plan_id, decision_id, actor, provider, model,
    prompt_tokens, completion_tokens, cost_usd, latency_ms, tool_calls, streaming,
    retry_count, error, started_at, namespace)
SELECT lpad(to_hex(i), 32, '0')::uuid, 'plan-' || (i %% 20000), 'd-' || i,
    (ARRAY['planner', 'coder', 'reviewer'])[1 + i %% 3],
    (ARRAY['openai', 'anthropic', 'selfhosted'])[1 + i %% 3],
    (ARRAY['gpt-4o', 'claude-sonnet-4-5', 'house-llm', 'gpt-4o-mini'])[1 + i %% 4],
    100 + i %% 900, 20 + i %% 300,
    CASE WHEN i %% 3 = 2 THEN NULL ELSE (i %% 1000) / 100000.0 END,
    10 + i %% 2000, '{}', false, 0, CASE WHEN i %% 50 = 0 THEN 'timeout' END,
    now() - make_interval(secs => (i::double precision / %s) * %s * 86400), %s
FROM generate_series(1, %s) AS i
"""

URLS = (
    "/api/live",
    "/api/overview",
    "/api/activity",
    "/api/cost?by=model&range=24h",
    "/api/cost?by=model&range=90d",
    "/api/cost.csv?by=model&range=90d",
    "/api/cost/series?by=model&range=24h",
    "/api/cost/series?by=provider&range=90d",
    "/api/plans?limit=100",
    "/api/plans?q=plan-1234&limit=100",
    "/api/dlq?group=persist",
    "/",
    "/cost?range=24h",
    "/cost?range=90d",
    "/plans",
    "/dlq",
)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    try:
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            # Every row in the dashboard's namespace: schema 6 refuses a row without one.
            fill = (args.calls, args.days, keys.namespace, args.calls)
            conn.execute(FILL, fill)
            conn.execute("VACUUM ANALYZE llm_traces")
            counted = time.perf_counter()
            conn.execute("SELECT count(*) FROM llm_traces").fetchone()
            count_s = time.perf_counter() - counted
        filled_s = time.perf_counter() - started
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
            print(f"{'URL':42} {'median ms':>10} {'max ms':>8}")
            for path in URLS:
                median, slowest = _time(server.url + path, args.repeat)
                print(f"{path:42} {median * 1000:10.0f} {slowest * 1000:8.0f}")
        finally:
            server.shutdown()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(match=f"{keys.prefix}*"):
            client.delete(key)


if __name__ == "__main__":
    main()
