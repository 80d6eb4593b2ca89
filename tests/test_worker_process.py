"""Worker processes started as a user starts them (``python -m fleettrace_worker.cli
worker``), fed by producer processes through the real emitter, signalled with
os.kill, against the machine's Redis and PostgreSQL (or a private PostgreSQL that the
test stops and starts)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import psycopg
import pytest
import redis

from fleettrace_worker.keys import PERSIST_GROUP
from tests.factories import add_traces, numbered_trace
from tests.servers import free_port
from tests.tables import read_table
from tests.waiting import wait_until
from tests.worker_helpers import (
    ROOT,
    fleettrace,
    http_get,
    migrated,
    pending,
    sample_rows,
    scalar,
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


def _stop(worker, timeout_s=60) -> tuple[str, str]:
    if worker.poll() is None:
        os.kill(worker.pid, signal.SIGTERM)
    out, err = worker.communicate(timeout=timeout_s)
    return out, err


def _distinct_decisions(db) -> int:
    return scalar(db, "SELECT count(DISTINCT decision_id) FROM llm_traces")


@pytest.fixture
def db(database_url) -> str:
    return migrated(database_url)


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


def _worker_with_a_batch_in_hand(redis_url, redis_client, keys, db):
    """300 traces, llm_traces locked, and a worker (consumer w1) that has read a batch
    and is blocked storing it. Returns the worker, its environment and the lock's
    connection (roll it back to let the worker go on)."""
    env = worker_env(redis_url, db, keys)
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(300)])
    lock = psycopg.connect(db)
    lock.execute("LOCK TABLE llm_traces IN ACCESS EXCLUSIVE MODE")
    worker = start_worker("--consumer", "w1", env=env)
    try:
        wait_until(lambda: pending(redis_client, keys) > 0, 60, "a batch in hand")
    except BaseException:
        worker.kill()
        worker.wait(10)
        lock.close()
        raise
    return worker, env, lock


@pytest.mark.slow
def test_sigterm_finishes_and_acknowledges_the_batch_in_hand(
    redis_url, redis_client, keys, db
) -> None:
    worker, _, lock = _worker_with_a_batch_in_hand(redis_url, redis_client, keys, db)
    try:
        os.kill(worker.pid, signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(0.5)  # still storing: blocked by the lock
    finally:
        lock.rollback()
        lock.close()
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert trace_rows(db) == 300
    assert pending(redis_client, keys) == 0


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_the_batch_is_taken_over(
    redis_url, redis_client, keys, db
) -> None:
    worker, env, lock = _worker_with_a_batch_in_hand(redis_url, redis_client, keys, db)
    try:
        os.kill(worker.pid, signal.SIGTERM)
        threading.Event().wait(0.2)
        os.kill(worker.pid, signal.SIGINT)
        worker.communicate(timeout=30)
        assert worker.returncode == 130
        assert pending(redis_client, keys) == 1
    finally:
        lock.rollback()
        lock.close()
    assert trace_rows(db) == 0
    # Restarted under its own name, it finishes its own pending entries at once
    # (without waiting for --claim-idle-ms, 30 s by default).
    done = fleettrace("worker", "--burst", "--consumer", "w1", env=env)
    assert done.returncode == 0, done.stderr
    assert trace_rows(db) == 300
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


@pytest.mark.slow
def test_an_abandoned_langsmith_group_holds_the_stream_until_dropped_then_it_stays_bounded(
    redis_url, redis_client, keys, db, tmp_path
) -> None:
    from tests.langsmith_server import LangSmithServer

    env = worker_env(redis_url, db, keys)
    add_traces(redis_client, keys, [numbered_trace(0)])
    # Forwarding on once: both groups made, everything forwarded and stored.
    with LangSmithServer(api_key="k") as server:
        once = fleettrace(
            "worker",
            "--burst",
            "--consumer",
            "once",
            env={
                **env,
                "LANGSMITH_TRACING": "true",
                "LANGSMITH_API_KEY": "k",
                "LANGSMITH_ENDPOINT": server.url,
            },
        )
    assert once.returncode == 0, once.stderr
    assert trace_rows(db) == 1
    # Forwarding off: only persist runs; the langsmith group stays behind.
    port = free_port()
    log_file = tmp_path / "worker.log"
    with log_file.open("w") as log:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "fleettrace_worker.cli", "worker", "--consumer", "w1"),
                *("--block-ms", "100", "--group-max-lag", "50", "--http", f"127.0.0.1:{port}"),
            ],
            env=env,
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
    try:
        sent = 1
        for _ in range(3):
            for _ in range(40):
                add_traces(redis_client, keys, [numbered_trace(sent)])
                sent += 1
            wait_until(lambda sent=sent: trace_rows(db) == sent, 60, "rows stored")
        wait_until(lambda: "is behind" in log_file.read_text(), 60, "the warning")
        # A trim ran before the warning (same housekeeping round): nothing was removed.
        assert redis_client.xlen(keys.traces) == sent
        warning = log_file.read_text()
        assert f"consumer group langsmith on {keys.traces} is behind: lag 120" in warning
        assert "fleettrace groups drop langsmith" in warning
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        behind = f'fleettrace_worker_group_behind{{group="langsmith",stream="{keys.traces}"}}'
        assert f"{behind} 1.0" in metrics
        assert (
            f'fleettrace_worker_group_behind{{group="persist",stream="{keys.traces}"}} 0.0'
            in metrics
        )

        listed = fleettrace("groups", "list", "--max-lag", "50", env=env)
        assert listed.returncode == 0, listed.stderr
        header, rows, _ = read_table(listed.stdout)
        row = next(
            dict(zip(header, r, strict=True)) for r in rows if r[:2] == [keys.traces, "langsmith"]
        )
        assert (row["LAG (entries)"], row["BEHIND"]) == ("120", "yes")
        # The burst worker used it moments ago: dropping asks for --force.
        refused = fleettrace("groups", "drop", "langsmith", "--yes", env=env)
        assert refused.returncode == 1
        assert "stop the workers that run it first, or pass --force" in refused.stdout
        dropped = fleettrace("groups", "drop", "langsmith", "--yes", "--force", env=env)
        assert dropped.returncode == 0, dropped.stderr
        assert f"dropped consumer group 'langsmith' from {keys.traces}" in dropped.stdout

        lengths = []
        for _ in range(8):
            for _ in range(60):
                add_traces(redis_client, keys, [numbered_trace(sent)])
                sent += 1
            wait_until(lambda sent=sent: trace_rows(db) == sent, 60, "rows stored")
            wait_until(lambda: redis_client.xlen(keys.traces) <= 150, 60, "the stream trimmed")
            lengths.append(redis_client.xlen(keys.traces))
        # 480 more entries went through; the stream kept at most a trim's slack of them.
        assert sent == 601
        assert max(lengths) <= 150
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        assert behind not in metrics
    finally:
        _stop(worker)
    assert worker.returncode == 0, log_file.read_text()
    assert trace_rows(db) == 601


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
