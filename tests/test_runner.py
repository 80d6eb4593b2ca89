"""The worker process's settings and supervision, in this process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

import pytest
import redis

from fleettrace.errors import ConfigurationError, RedisUnavailable
from fleettrace.keys import LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker import runner
from fleettrace_worker.cli.worker import selected_groups
from fleettrace_worker.consumer import Entry
from fleettrace_worker.deadletter import DeadLetter
from fleettrace_worker.loop import GroupLoop, LoopStats, Prepared
from fleettrace_worker.runner import ENV_PREFIX, Worker, WorkerSettings, check_health
from tests.servers import free_port

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
        ({"groups": ("persist", "nope")}, "groups must be among persist, langsmith, got"),
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
    assert default.consumer == runner.default_consumer_name()
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
        ({"ready": True, "updated_at": now - runner.HEALTH_FRESH_S - 1}, False),
        ({"ready": True}, False),
        ({"ready": False, "updated_at": now}, False),
        (["ready"], False),
    ]
    for health, expected in cases:
        redis_client.set(key, json.dumps(health))
        assert check_health(redis_client, keys, "w1") is expected, health


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
