"""Building blocks of the worker tests: real entries in the real format, a migrated
database, and counts of what landed where."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from fleettrace.keys import Keys, configured_namespace
from fleettrace.model import LLMTrace
from fleettrace_worker.cli import main
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.process import Worker
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.migrations import migrate
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def migrated(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
    return database_url


def at_schema_version(conn: psycopg.Connection[tuple[object, ...]], version: int) -> None:
    """Bring an empty database to schema ``version`` as that version's ``migrate`` left
    it: the shipped migrations up to it applied and recorded, the later ones not."""
    table = sql.Identifier(migrations.VERSION_TABLE)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(table)
    )
    for migration in migrations.available():
        if migration.version > version:
            continue
        conn.execute(migration.sql.encode())
        conn.execute(
            sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(table),
            (migration.version, migration.name),
        )


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


def index_copies(conn: psycopg.Connection[Any], index: str) -> list[str]:
    """``index`` and its copies on the table's partitions (schema 8): a plan over a
    partitioned table names the partitions' indexes, attached to the parent's."""
    rows = conn.execute(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = to_regclass(%s)",
        (index,),
    ).fetchall()
    return [index, *(str(row[0]) for row in rows)]


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


def fleettrace_here(
    *args: str,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> subprocess.CompletedProcess[str]:
    """``fleettrace ARGS`` called in this process with ``env`` as the whole process
    environment (settings read it when a command runs): what it prints without an
    interpreter's start-up. ``--help`` exits 0. Not for a promise about the process
    itself (its exit status as a shell sees it, stderr holding one line: records
    logged here reach pytest's handlers, not stderr): run those with :func:`fleettrace`."""
    capsys.readouterr()
    with monkeypatch.context() as patched:
        for name in set(os.environ) - set(env):
            patched.delenv(name)
        for name, value in env.items():
            patched.setenv(name, value)
        try:
            code = main(list(args))
        except SystemExit as exit_:
            assert exit_.code == 0 and "--help" in args, (args, exit_.code)
            code = 0
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def finished(
    process: subprocess.Popen[str], timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """A started ``fleettrace`` call once it has exited (killed after ``timeout_s``)."""
    try:
        out, err = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def fleettrace_together(
    *calls: tuple[tuple[str, ...], dict[str, str]], timeout_s: float = 120.0
) -> list[subprocess.CompletedProcess[str]]:
    """Independent ``fleettrace`` calls (arguments, environment) run at once, so their
    interpreters start side by side; their results in the order given."""
    started: list[subprocess.Popen[str]] = []
    try:
        for args, env in calls:
            started.append(start_fleettrace(*args, env=env))
        return [finished(process, timeout_s) for process in started]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.communicate()


def start_worker(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return start_fleettrace("worker", *args, env=env)


def start_fleettrace(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``fleettrace ARGS`` started, not awaited: its output is read with ``communicate()``."""
    return subprocess.Popen(
        [sys.executable, "-m", "fleettrace_worker.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def drain(redis_url: str, keys: Keys, database_url: str, **options: Any) -> None:
    """Run a burst worker (consumer ``dash``; ``options``: more of its settings) until
    the namespace's streams are drained; it must exit 0."""
    settings = WorkerSettings(
        redis_url,
        database_url,
        namespace=keys.namespace,
        consumer="dash",
        block_ms=100,
        burst=True,
        **options,
    )
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(Worker(settings).run()))
    thread.start()
    thread.join(120)
    assert result == [0]


@contextmanager
def serving_worker(
    redis_url: str, database_url: str, keys: Keys, *, join_s: float = 30, **options: Any
) -> Iterator[tuple[Worker, str]]:
    """A worker in a thread with its HTTP endpoints on a free loopback port (``options``
    are more of its settings); yields it and its base URL, then stops it: it must have
    exited 0."""
    port = free_port()
    settings = WorkerSettings(
        redis_url,
        database_url,
        namespace=keys.namespace,
        block_ms=100,
        http=f"127.0.0.1:{port}",
        **options,
    )
    worker = Worker(settings)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()))
    thread.start()
    try:
        yield worker, f"http://127.0.0.1:{port}"
    finally:
        worker.stop.set()
        thread.join(join_s)
    assert result == [0]


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


#: The namespace the commands work within by default, and rows are stored under here.
NAMESPACE = configured_namespace()


def _record(item: dict[str, object]) -> LLMTrace:
    """The record of one trace of --json output, which also says its namespace."""
    assert item["namespace"] == NAMESPACE
    fields = {k: v for k, v in item.items() if k != "namespace"}
    return LLMTrace.model_validate_json(json.dumps(fields))


def _store(url: str, traces: list[LLMTrace]) -> None:
    with database.create_pool(url) as pool:
        LLMTraceRepository(pool).store(traces)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_clean_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@dataclass
class Fleets:
    """Two namespaces' rows in one database: ``a`` and ``b`` hold the trace ids of each
    (newest first), ``legacy`` one row stored before namespaces."""

    url: str
    a: Keys
    b: Keys
    traces_a: list[LLMTrace]
    traces_b: list[LLMTrace]
    legacy: LLMTrace


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def _store_legacy(url: str, trace: LLMTrace) -> None:
    """A row as stored before schema version 3: no producer, no namespace (the check
    that refuses such rows now is lifted for the insert and put back, NOT VALID)."""
    with database.create_pool(url) as pool:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE llm_traces DROP CONSTRAINT llm_traces_with_namespace")
        LLMTraceRepository(pool).store([trace])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE llm_traces SET namespace = NULL WHERE trace_id = %s", (trace.trace_id,)
            )
            conn.execute(
                "ALTER TABLE llm_traces ADD CONSTRAINT llm_traces_with_namespace "
                "CHECK (namespace IS NOT NULL) NOT VALID"
            )


def _stop(worker, timeout_s=60) -> tuple[str, str]:
    if worker.poll() is None:
        os.kill(worker.pid, signal.SIGTERM)
    out, err = worker.communicate(timeout=timeout_s)
    return out, err


def _distinct_decisions(db) -> int:
    return scalar(db, "SELECT count(DISTINCT decision_id) FROM llm_traces")
