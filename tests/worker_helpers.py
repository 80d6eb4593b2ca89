"""Building blocks of the worker tests: real entries in the real format, a migrated
database, and counts of what landed where."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import redis

from fleettrace.keys import PERSIST_GROUP, Keys
from fleettrace_worker.migrations import migrate

ROOT = Path(__file__).resolve().parent.parent


def migrated(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
    return database_url


def _migrate_in_process(url: str, queue: multiprocessing.Queue[tuple[str, ...]]) -> None:
    with psycopg.connect(url) as conn:
        queue.put(migrate(conn).applied)


def migrate_from_processes(database_url: str, count: int = 2) -> list[tuple[str, ...]]:
    """Migrate ``database_url`` from ``count`` processes at once (as workers on several
    hosts would): the migrations each applied, sorted. Each process must exit 0."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[tuple[str, ...]] = context.Queue()
    processes = [
        context.Process(target=_migrate_in_process, args=(database_url, queue))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * count
    return sorted(queue.get(timeout=5) for _ in processes)


def scalar(database_url: str, query: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def http_get(url: str) -> tuple[int, str]:
    """The status and body of a GET (an error status with its body too); 0 and no
    body while nothing listens yet, so a test can wait on the answer it expects."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError:
        return 0, ""


def trace_rows(database_url: str) -> int:
    return scalar(database_url, "SELECT count(*) FROM llm_traces")


def sample_rows(database_url: str) -> int:
    return scalar(database_url, "SELECT count(*) FROM metric_samples")


def pending(client: redis.Redis, keys: Keys, group: str = PERSIST_GROUP) -> int:
    total = 0
    for stream in keys.streams:
        if client.exists(stream):
            for info in client.xinfo_groups(stream):
                if info["name"].decode() == group:
                    total += int(info["pending"])
    return total


def worker_env(redis_url: str, database_url: str, keys: Keys) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LANGCHAIN_", "LANGSMITH_", "OTEL_"))
    }
    env.update(
        FLEETTRACE_REDIS_URL=redis_url,
        FLEETTRACE_DATABASE_URL=database_url,
        FLEETTRACE_NAMESPACE=keys.namespace,
        FLEETTRACE_LOG_LEVEL="WARNING",
    )
    return env


def fleettrace(
    *args: str, env: dict[str, str], timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleettrace_worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=ROOT,
    )


def start_worker(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleettrace_worker.cli", "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
