"""The worker process's settings and supervision, in this process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
import redis

from fleettrace.errors import ConfigurationError, RedisUnavailable
from fleettrace_worker import presence
from fleettrace_worker import process as runner
from fleettrace_worker.cli.worker import selected_groups
from fleettrace_worker.context import ENV_PREFIX, WorkerSettings
from fleettrace_worker.keys import LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker.presence import check_health
from fleettrace_worker.process import Worker
from fleettrace_worker.stream.consumer import Consumer, Entry
from fleettrace_worker.stream.deadletter import DeadLetter
from fleettrace_worker.stream.loop import GroupLoop, LoopStats, Prepared
from tests.emitting import make_emitter
from tests.factories import numbered_trace
from tests.servers import free_port
from tests.waiting import wait_until
from tests.worker_helpers import migrated

SECRET_REDIS = "redis://user:s3cret@127.0.0.1:6379/0"
SECRET_PG = "postgresql://fleet:pa55word@127.0.0.1:5432/db"


def test_settings_repr_hides_passwords() -> None:
    shown = repr(WorkerSettings(SECRET_REDIS, SECRET_PG, consumer="w1"))
    assert "s3cret" not in shown and "pa55word" not in shown
    assert "redis://user:***@127.0.0.1:6379/0" in shown
    assert "consumer='w1'" in shown


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"batch_records": 0}, "batch_records must be positive"),
        ({"block_ms": -5}, "block_ms must not be negative"),
        ({"consumer": ""}, "consumer name must be 1-200 characters"),
        ({"groups": ("persist", "nope")}, "groups must be among persist, langsmith, otlp, got"),
        ({"groups": ()}, "got none"),
    ],
)
def test_settings_refuse_what_cannot_work(given, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WorkerSettings("redis://x", "postgresql://x", **given)


def test_settings_from_env_then_given_values() -> None:
    environ = {
        "FLEETTRACE_WORKER_BATCH_RECORDS": "5000",
        "FLEETTRACE_WORKER_CLAIM_IDLE_MS": "100",
        "FLEETTRACE_WORKER_CONSUMER": "from-env",
    }
    settings = WorkerSettings.from_env("redis://x", "postgresql://x", environ, claim_idle_ms=7)
    assert (settings.batch_records, settings.claim_idle_ms) == (5000, 7)
    assert settings.consumer == "from-env"
    assert settings.loop_settings().batch_records == 5000
    default = WorkerSettings.from_env("redis://x", "postgresql://x", {})
    assert default.consumer == presence.default_consumer_name()
    with pytest.raises(ConfigurationError, match="FLEETTRACE_WORKER_BLOCK_MS must be a whole"):
        WorkerSettings.from_env("redis://x", "postgresql://x", {"FLEETTRACE_WORKER_BLOCK_MS": "x"})


def test_groups_follow_the_tracing_switch(monkeypatch) -> None:
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING_V2"):
        monkeypatch.delenv(name, raising=False)
    assert selected_groups(None) == (PERSIST_GROUP,)
    assert selected_groups(LANGSMITH_GROUP) == (LANGSMITH_GROUP,)
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    assert selected_groups(None) == (PERSIST_GROUP, LANGSMITH_GROUP)


class _Loop(GroupLoop[None]):
    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.stats = LoopStats("persist")

    def prepare(self, entries: Sequence[Entry]) -> Prepared[None]:
        raise NotImplementedError

    def deliver(self, payload: None) -> list[DeadLetter]:
        raise NotImplementedError

    @property
    def group(self) -> str:
        return "persist"

    def run(self, stop: threading.Event) -> None:
        if self.error is not None:
            raise self.error


def _worker(monkeypatch, loop_error: BaseException | None, redis_url: str) -> Worker:
    monkeypatch.setitem(runner.GROUP_LOOPS, PERSIST_GROUP, lambda context: _Loop(loop_error))
    return Worker(WorkerSettings(redis_url, "postgresql://x", consumer="t1"))


def test_a_bug_in_a_group_ends_the_worker_with_1(monkeypatch, redis_url, caplog) -> None:
    assert _worker(monkeypatch, RuntimeError("boom"), redis_url).run() == 1
    assert "group persist failed" in caplog.text


def test_a_fleettrace_error_in_a_group_reaches_the_command(monkeypatch, redis_url) -> None:
    with pytest.raises(RedisUnavailable, match="gone"):
        _worker(monkeypatch, RedisUnavailable("gone"), redis_url).run()


def test_a_group_without_a_loop_is_a_configuration_error(monkeypatch, redis_url) -> None:
    monkeypatch.delitem(runner.GROUP_LOOPS, PERSIST_GROUP)
    worker = Worker(WorkerSettings(redis_url, "postgresql://x"))
    with pytest.raises(ConfigurationError, match="not available in this build"):
        worker.run()


def test_housekeeping_survives_an_unreachable_redis(monkeypatch) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    worker = _worker(monkeypatch, None, url)
    assert worker.run() == 0
    worker._trim()
    assert worker.health()["ready"] is False
    assert check_health(redis.Redis.from_url(url), worker.keys, "t1") is False


def test_check_wants_a_fresh_ready_snapshot(redis_client, keys) -> None:
    key = keys.worker_health("w1")
    now = time.time()
    cases = [
        ({"ready": True, "updated_at": now}, True),
        ({"ready": True, "updated_at": now - presence.HEALTH_FRESH_S - 1}, False),
        ({"ready": True}, False),
        ({"ready": False, "updated_at": now}, False),
        (["ready"], False),
    ]
    for health, expected in cases:
        redis_client.set(key, json.dumps(health))
        assert check_health(redis_client, keys, "w1") is expected, health


class _Reading(_Loop):
    """A loop that really reads once through its consumer's own client."""

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(None)
        self.consumer = consumer

    def run(self, stop: threading.Event) -> None:
        self.consumer.ensure_groups()
        self.consumer.read(count=1, block_ms=None)


def test_the_worker_closes_every_connection_it_opened(monkeypatch, private_redis) -> None:
    monkeypatch.setitem(
        runner.GROUP_LOOPS,
        PERSIST_GROUP,
        lambda context: _Reading(context.consumer(PERSIST_GROUP)),
    )
    port = free_port()
    settings = WorkerSettings(
        private_redis.url, "postgresql://x", consumer="t1", http=f"127.0.0.1:{port}"
    )
    assert Worker(settings).run() == 0
    probe = redis.Redis.from_url(private_redis.url)
    try:
        # The probe itself is the only client left: the loop's, the HTTP endpoint's and
        # the health writer's connections are all closed.
        assert probe.info("clients")["connected_clients"] == 1
    finally:
        probe.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1):
        pass


def test_the_default_consumer_name_is_the_host_and_the_pid() -> None:
    assert presence.default_consumer_name() == f"{socket.gethostname()}-{os.getpid()}"
    assert WorkerSettings("redis://x", "postgresql://x").consumer.endswith(f"-{os.getpid()}")


def test_the_runtime_directory_follows_the_environment(tmp_path) -> None:
    assert presence.runtime_dir({"FLEETTRACE_RUNTIME_DIR": "/x/y", "XDG_RUNTIME_DIR": "/r"}) == (
        Path("/x/y")
    )
    assert presence.runtime_dir({"XDG_RUNTIME_DIR": "/r"}) == Path("/r/fleettrace")
    assert presence.runtime_dir({}).name == f"fleettrace-{os.getuid()}"


def test_runtime_files_name_live_workers_only(tmp_path) -> None:
    directory = tmp_path / "run"
    mine = presence.PresenceFile(directory, "host-1", "ns")
    assert mine.write()
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = directory / f"worker-{int(gone.stdout)}.json"
    stale.write_text(json.dumps({"pid": int(gone.stdout), "consumer": "old", "namespace": "ns"}))
    (directory / "worker-junk.json").write_text("{not json")
    assert presence.local_workers(directory) == [presence.LocalWorker(os.getpid(), "host-1", "ns")]
    assert not stale.exists()
    mine.remove()
    mine.remove()
    assert presence.local_workers(directory) == []
    assert presence.local_workers(tmp_path / "never-made") == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs to hand a directory to another user")
def test_a_runtime_directory_of_another_user_is_refused(tmp_path) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir()
    os.chown(directory, 65534, 65534)
    with pytest.raises(ConfigurationError, match="not a directory of this user"):
        presence.local_workers(directory)
    assert presence.PresenceFile(directory, "w", "ns").write() is False


def test_every_setting_variable_is_read_with_its_type() -> None:
    env = {
        "FLEETTRACE_WORKER_STATEMENT_TIMEOUT_MS": "2500",
        "FLEETTRACE_WORKER_LOCK_TIMEOUT_MS": "0",
        "FLEETTRACE_WORKER_PROGRESS_LIMIT_S": "7.5",
    }
    settings = WorkerSettings.from_env("redis://r", "postgresql://p", env)
    assert (settings.statement_timeout_ms, settings.lock_timeout_ms) == (2500, 0)
    assert settings.progress_limit_s == 7.5
    assert settings.loop_settings().progress_limit_s == 7.5
    with pytest.raises(ConfigurationError, match="LOCK_TIMEOUT_MS must be a whole number"):
        WorkerSettings.from_env(
            "redis://r", "postgresql://p", {ENV_PREFIX + "LOCK_TIMEOUT_MS": "1.5"}
        )
    with pytest.raises(ConfigurationError, match="lock_timeout_ms must not be negative"):
        WorkerSettings("redis://r", "postgresql://p", lock_timeout_ms=-1)
    with pytest.raises(ConfigurationError, match="progress_limit_s must be positive"):
        WorkerSettings("redis://r", "postgresql://p", progress_limit_s=0)


@pytest.mark.slow
def test_a_running_worker_picks_up_a_new_producer_and_names_it_on_the_rows(
    redis_url, keys, database_url
) -> None:
    """No restart, no registry: the second producer's stream appears while the worker
    runs, and its rows say who recorded them (from the stream key)."""
    db = migrated(database_url)
    worker = Worker(
        WorkerSettings(redis_url, db, namespace=keys.namespace, consumer="w-new", block_ms=100)
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    def rows_by_producer() -> dict[str, int]:
        with psycopg.connect(db) as conn:
            found = conn.execute(
                "SELECT producer, count(*) FROM llm_traces WHERE namespace = %s GROUP BY producer",
                (keys.namespace,),
            ).fetchall()
        return {str(producer): int(count) for producer, count in found}

    try:
        for producer, count in (("first", 3), ("second", 2)):
            with make_emitter(redis_url, keys, producer=producer) as emitter:
                for i in range(count):
                    emitter.record(numbered_trace(i))
                assert emitter.flush(10)
            wait_until(lambda p=producer, n=count: rows_by_producer().get(p) == n, 30, producer)
        assert rows_by_producer() == {"first": 3, "second": 2}
        assert redis.Redis.from_url(redis_url).smembers(keys.producers) == {b"first", b"second"}
    finally:
        worker.stop.set()
        thread.join(30)
    assert not thread.is_alive()
