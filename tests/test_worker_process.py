"""Worker processes started as a user starts them (``python -m fleettrace_worker.cli
worker``), fed by producer processes through the real emitter, signalled with
os.kill, against the machine's Redis and PostgreSQL (or a private PostgreSQL that the
test stops and starts): every record is stored once or is a dead letter, through
SIGKILLs and an outage. Signals: tests/test_worker_signals.py; starting, settings and
the probe: tests/test_worker_startup.py; an abandoned group: tests/test_worker_groups.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import psycopg
import pytest
import redis

from fleettrace_worker.keys import PERSIST_GROUP
from tests.factories import add_traces, numbered_trace
from tests.servers import free_port
from tests.waiting import wait_until
from tests.worker_helpers import (
    ROOT,
    _distinct_decisions,
    _stop,
    fleettrace,
    http_get,
    migrated,
    pending,
    sample_rows,
    start_worker,
    trace_rows,
    worker_env,
)


def _producers(redis_url, keys, *, count, samples, seconds, processes=4):
    per = count // processes
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.producer",
                keys.namespace,
                redis_url,
                str(p * per),
                str(per),
                str(samples // processes),
                str(seconds),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]


def _finish(procs, timeout_s=120) -> None:
    for proc in procs:
        out, err = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, (out, err)


@pytest.mark.slow
def test_four_producers_two_workers_store_every_record_once(redis_url, keys, db) -> None:
    env = worker_env(redis_url, db, keys)
    workers = [
        start_worker("--consumer", name, "--block-ms", "200", env=env) for name in ("w1", "w2")
    ]
    try:
        _finish(_producers(redis_url, keys, count=20_000, samples=2_000, seconds=2))
        wait_until(lambda: trace_rows(db) >= 20_000 and sample_rows(db) >= 2_000, 120, "all rows")
    finally:
        results = [(w, *_stop(w)) for w in workers]
    for worker, _, err in results:
        assert worker.returncode == 0, err
    assert trace_rows(db) == 20_000
    assert _distinct_decisions(db) == 20_000
    assert sample_rows(db) == 2_000
    client = redis.Redis.from_url(redis_url)
    assert pending(client, keys) == 0
    client.close()


@pytest.mark.slow
def test_sigkill_mid_run_three_times_leaves_exactly_the_sent_rows(
    redis_url, redis_client, keys, db
) -> None:
    env = worker_env(redis_url, db, keys)
    producers = _producers(redis_url, keys, count=20_000, samples=2_000, seconds=6)
    args = ("--block-ms", "100", "--batch", "300", "--claim-idle-ms", "500")
    try:
        for round_ in range(3):
            worker = start_worker("--consumer", f"doomed-{round_}", *args, env=env)
            floor = trace_rows(db)
            wait_until(
                lambda floor=floor: trace_rows(db) > floor or pending(redis_client, keys) > 0, 60
            )
            threading.Event().wait(0.3)
            os.kill(worker.pid, signal.SIGKILL)
            worker.communicate(timeout=30)
            assert worker.returncode == -signal.SIGKILL
        _finish(producers)
    finally:
        for proc in producers:
            if proc.poll() is None:
                proc.kill()
    last = start_worker("--consumer", "survivor", *args, env=env)
    try:
        wait_until(lambda: trace_rows(db) >= 20_000 and sample_rows(db) >= 2_000, 120, "all rows")
        wait_until(lambda: pending(redis_client, keys) == 0, 60, "nothing pending")
    finally:
        _, err = _stop(last)
    assert last.returncode == 0, err
    assert trace_rows(db) == 20_000
    assert _distinct_decisions(db) == 20_000
    assert sample_rows(db) == 2_000
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0


@pytest.mark.slow
def test_postgres_outage_makes_the_worker_not_ready_then_it_catches_up(
    redis_url, redis_client, keys, private_postgres
) -> None:
    db = migrated(private_postgres.url)
    env = worker_env(redis_url, db, keys)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = start_worker(
        "--consumer", "w1", "--block-ms", "100", "--http", f"127.0.0.1:{port}", env=env
    )
    try:
        add_traces(redis_client, keys, [numbered_trace(i) for i in range(500)])
        wait_until(lambda: trace_rows(db) == 500, 60, "first rows")
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 30, "ready")
        private_postgres.stop()
        for start in range(500, 3_000, 500):
            add_traces(redis_client, keys, [numbered_trace(i) for i in range(start, start + 500)])
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 503, 60, "not ready")
        _, body = http_get(f"{base}/readyz")
        assert "PostgreSQL" in body and "unavailable" in body
        assert http_get(f"{base}/healthz") == (200, "ok\n")
        assert pending(redis_client, keys) > 0
        private_postgres.start()
        wait_until(lambda: trace_rows(db) == 3_000, 120, "catch up")
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 30, "ready again")
        metrics = http_get(f"{base}/metrics")[1]
        assert 'fleettrace_worker_records_total{group="persist"} 3000.0' in metrics
        assert 'fleettrace_worker_retries_total{group="persist"}' in metrics
    finally:
        _, err = _stop(worker)
    assert worker.returncode == 0, err
    assert pending(redis_client, keys) == 0


@pytest.mark.slow
def test_malformed_entries_end_as_dead_letters_and_replay_brings_fixed_ones_home(
    redis_url, redis_client, keys, db
) -> None:
    env = worker_env(redis_url, db, keys)
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(10)])
    redis_client.xadd(keys.traces, {b"v": b"1", b"k": b"x"})
    redis_client.xadd(
        keys.traces, {b"v": b"1", b"k": b"t", b"b": b"0" * 32, b"n": b"1", b"d": b"{"}
    )
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE llm_traces ADD CONSTRAINT no_poison CHECK (model <> 'poison')")
    add_traces(redis_client, keys, [numbered_trace(99, model="poison")])
    done = fleettrace("worker", "--burst", "--consumer", "w1", env=env)
    assert done.returncode == 0, done.stderr
    assert trace_rows(db) == 10
    listed = fleettrace("dlq", "list", "--json", env=env)
    assert listed.returncode == 0
    letters = json.loads(listed.stdout)["items"]
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(reasons) == 3
    assert reasons[0].startswith("field 'k' must be 't' or 'm'")
    assert reasons[1] == "record: Invalid JSON: EOF while parsing an object at line 1 column 1"
    assert "no_poison" in reasons[2]
    text = fleettrace("dlq", "list", env=env)
    assert text.stdout.splitlines()[-1] == (
        f"3 dead letters in group persist of namespace {keys.namespace!r}"
    )
    assert "REASON" in text.stdout.splitlines()[0]
    # The constraint was the cause: once it is gone, replay brings the poison row home.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE llm_traces DROP CONSTRAINT no_poison")
    replay = fleettrace("dlq", "replay", "--all", env=env)
    assert replay.returncode == 1  # the two malformed entries stay
    assert "replayed 1 dead letter; kept 2; not found 0" in replay.stdout
    done = fleettrace("worker", "--burst", "--consumer", "w1", env=env)
    assert done.returncode == 0, done.stderr
    assert trace_rows(db) == 11
    again = fleettrace("dlq", "replay", "--id", "1-1", env=env)
    assert again.returncode == 1
    assert "1-1: no such dead letter" in again.stdout
    assert fleettrace("dlq", "list", "--group", "langsmith", env=env).stdout.startswith(
        "no dead letters in group langsmith"
    )
