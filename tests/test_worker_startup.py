"""Starting worker processes as a user starts them: ``--check`` reports a ready worker
only, bad settings and a database without the schema are one line, and two workers on one
host get their own consumer names that the probe finds."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from fleettrace_worker.keys import PERSIST_GROUP
from tests.factories import add_traces, numbered_trace
from tests.servers import free_port
from tests.waiting import wait_until
from tests.worker_helpers import (
    _distinct_decisions,
    _stop,
    fleettrace,
    pending,
    start_worker,
    trace_rows,
    worker_env,
)


@pytest.mark.slow
def test_check_reports_a_ready_worker_only(redis_url, redis_client, keys, db) -> None:
    env = worker_env(redis_url, db, keys)
    assert fleettrace("worker", "--check", "--consumer", "w1", env=env).returncode == 1
    worker = start_worker("--consumer", "w1", "--block-ms", "100", env=env)
    try:

        def ready() -> bool:
            raw = redis_client.get(keys.worker_health("w1"))
            return raw is not None and json.loads(raw)["ready"] is True

        wait_until(ready, 60, "ready")
        assert fleettrace("worker", "--check", "--consumer", "w1", env=env).returncode == 0
        health = json.loads(redis_client.get(keys.worker_health("w1")))
        assert health["ready"] is True
        assert health["groups"][0]["group"] == "persist"
    finally:
        _, err = _stop(worker)
    assert worker.returncode == 0, err
    assert fleettrace("worker", "--check", "--consumer", "w1", env=env).returncode == 1
    redis_client.set(keys.worker_health("w1"), b"not json")
    assert fleettrace("worker", "--check", "--consumer", "w1", env=env).returncode == 1


@pytest.mark.slow
def test_worker_refuses_a_database_without_the_schema(redis_url, keys, database_url) -> None:
    done = fleettrace("worker", "--burst", env=worker_env(redis_url, database_url, keys))
    assert done.returncode == 1
    assert "fleettrace worker: the database has no fleettrace schema" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--http", "nowhere"), "--http must be HOST:PORT"),
        (("--batch", "0"), "argument --batch: must be at least 1, got 0"),
        (("--block-ms", "-1"), "argument --block-ms: must be at least 0, got -1"),
    ],
)
def test_bad_settings_are_one_line(redis_url, keys, db, args, message) -> None:
    done = fleettrace("worker", "--burst", *args, env=worker_env(redis_url, db, keys))
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_forwarding_on_without_a_key_refuses_to_start_in_one_line(
    redis_url, redis_client, keys, db
) -> None:
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(5)])
    env = worker_env(redis_url, db, keys)
    env["LANGSMITH_TRACING"] = "true"
    done = fleettrace("worker", "--burst", "--consumer", "w1", env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fleettrace worker: LangSmith forwarding is on")
    assert "LANGSMITH_API_KEY" in lines[0]
    # Refused before it read anything: no group read an entry, no row stored.
    assert trace_rows(db) == 0
    assert pending(redis_client, keys) == 0


def _consumers(client, keys) -> set[str]:
    return {c["name"].decode() for c in client.xinfo_consumers(keys.traces, PERSIST_GROUP)}


def _ready(client, keys, name) -> bool:
    raw = client.get(keys.worker_health(name))
    return raw is not None and json.loads(raw)["ready"] is True


@pytest.mark.slow
def test_two_workers_on_one_host_get_their_own_names_and_the_probe_finds_them(
    redis_url, redis_client, keys, db, tmp_path
) -> None:
    env = worker_env(redis_url, db, keys)
    env.pop("FLEETTRACE_WORKER_CONSUMER", None)
    env["FLEETTRACE_RUNTIME_DIR"] = str(tmp_path / "run")
    probe = ("worker", "--check")
    assert fleettrace(*probe, env=env).returncode == 1  # nothing runs yet
    workers = [start_worker("--block-ms", "100", env=env) for _ in range(2)]
    host = socket.gethostname()
    names = {f"{host}-{worker.pid}" for worker in workers}
    try:
        for start in range(0, 400, 20):
            add_traces(redis_client, keys, [numbered_trace(i) for i in range(start, start + 20)])
        wait_until(lambda: trace_rows(db) == 400, 60, "all rows")
        wait_until(lambda: all(_ready(redis_client, keys, n) for n in names), 60, "both ready")
        assert _consumers(redis_client, keys) == names
        assert _distinct_decisions(db) == 400
        checked = fleettrace(*probe, env=env)
        assert checked.returncode == 0, checked.stderr
        # One killed: its runtime file stays, but names a process that is gone.
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].communicate(timeout=30)
        assert fleettrace(*probe, env=env).returncode == 0
    finally:
        _, err = _stop(workers[1])
        if workers[0].poll() is None:
            workers[0].kill()
            workers[0].communicate(timeout=30)
    assert workers[1].returncode == 0, err
    gone = fleettrace(*probe, env=env)
    assert gone.returncode == 1
    assert "no worker runs here" in gone.stderr

    # A worker that cannot reach its database is running but not ready: the probe fails.
    broken = start_worker(
        "--block-ms", "100", env={**env, "FLEETTRACE_DATABASE_URL": _unreachable_database()}
    )
    try:
        wait_until(lambda: any((tmp_path / "run").glob("worker-*.json")), 60, "runtime file")
        wait_until(
            lambda: redis_client.exists(keys.worker_health(f"{host}-{broken.pid}")) == 1,
            60,
            "health written",
        )
        failed = fleettrace(*probe, env=env)
        assert failed.returncode == 1
        assert f"{host}-{broken.pid} is not ready" in failed.stderr
    finally:
        _stop(broken)


def _unreachable_database() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=1"
