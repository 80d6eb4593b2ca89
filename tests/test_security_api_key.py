"""The LangSmith API key is kept out of logs, dead letters, reprs and --help."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from fleettrace.codec import Kind, encode_batch, new_batch_id
from fleettrace.keys import Keys
from fleettrace_worker.cli import COMMANDS
from fleettrace_worker.forward.langsmith.group import ForwardLoop, loop_settings
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.keys import LANGSMITH_GROUP
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters
from tests.acl import API_KEY
from tests.factories import _trace
from tests.langsmith_server import Fault, LangSmithServer
from tests.worker_helpers import PG_ADMIN, fleettrace_here, worker_env

# -- the LangSmith API key ---------------------------------------------------------------


def test_the_api_key_is_in_no_log_dead_letter_or_repr(
    redis_client: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    entry = encode_batch(Kind.TRACE, [_trace(i) for i in range(4)], new_batch_id())
    with LangSmithServer(api_key=API_KEY) as server:
        settings = LangSmithSettings(
            enabled=True,
            endpoint=server.url,
            api_key=API_KEY,
            retry_for_s=0.5,
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
            request_timeout_s=0.5,
            concurrency=1,
        )
        consumer = Consumer(redis_client, keys, LANGSMITH_GROUP, "w-key")
        loop = ForwardLoop(consumer, settings, loop=loop_settings(settings, burst=True))
        # Refused for good (422), then unavailable in every way until given up.
        for faults in (
            (Fault("status", status=422, count=1),),
            (
                Fault("close", count=2),
                Fault("sleep", sleep_s=1.0, count=1),
                Fault("status", status=503, duration_s=600),
            ),
        ):
            server.clear_faults()
            server.inject(*faults)
            redis_client.xadd(keys.traces, entry)  # type: ignore[arg-type]
            loop.run(threading.Event())
        server.clear_faults()
    unreachable = LangSmithSettings(
        enabled=True,
        endpoint="http://127.0.0.1:9",
        api_key=API_KEY,
        retry_for_s=0.3,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    redis_client.xadd(keys.traces, entry)  # type: ignore[arg-type]
    ForwardLoop(
        Consumer(redis_client, keys, LANGSMITH_GROUP, "w-key-2"),
        unreachable,
        loop=loop_settings(unreachable, burst=True),
    ).run(threading.Event())

    letters = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    reasons = " ".join(letter.reason for _, letter in letters)
    assert "422" in reasons
    assert "did not answer in time" in reasons or "503" in reasons
    assert "cannot connect" in reasons
    texts = [caplog.text, reasons, repr(settings), str(settings), repr(loop), repr(loop.sender)]
    for text in texts:
        for part in (API_KEY, API_KEY[:12], API_KEY[-10:]):
            assert part not in text


def test_the_api_key_is_not_in_help(
    keys: Keys, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = worker_env("redis://127.0.0.1:6379/0", PG_ADMIN, keys)
    env.update(LANGSMITH_API_KEY=API_KEY, LANGSMITH_TRACING="true")
    for args in (("--help",), *((name, "--help") for name in COMMANDS)):
        result = fleettrace_here(*args, env=env, monkeypatch=monkeypatch, capsys=capsys)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: fleettrace")
        assert API_KEY not in result.stdout + result.stderr
        assert API_KEY[-10:] not in result.stdout + result.stderr
