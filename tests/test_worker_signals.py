"""A worker process (``python -m fleettrace_worker.cli worker``) signalled with
os.kill while it holds a batch: SIGTERM finishes and acknowledges it, a second signal
exits at once and another worker takes the batch over."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import psycopg
import pytest

from tests.factories import add_traces, numbered_trace
from tests.waiting import wait_until
from tests.worker_helpers import fleettrace, pending, start_worker, trace_rows, worker_env


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
