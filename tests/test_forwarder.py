"""The ``langsmith`` group against the real Redis and the LangSmith-compatible server,
through the real ``langsmith`` client."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
import requests
from langsmith import utils as ls_utils

from fleettrace.codec import Kind, encode_lines, encode_record, new_batch_id
from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace, MetricSample
from fleettrace_worker.errors import ForwardingDeferred, ForwardingRejected, ForwardingUnauthorized
from fleettrace_worker.forward.langsmith import group as forwarder_module
from fleettrace_worker.forward.langsmith.delivery import RunSender, classify, parse_retry_after
from fleettrace_worker.forward.langsmith.group import ForwardLoop, langsmith_loop, loop_settings
from fleettrace_worker.forward.langsmith.runs import llm_run, plan_root_id
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.keys import LANGSMITH_GROUP
from fleettrace_worker.stream import loop as loop_module
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import (
    DeadLetterLog,
    list_dead_letters,
    replay_dead_letters,
)
from tests.factories import add_samples, add_traces, llm_trace
from tests.langsmith_server import Fault, LangSmithServer
from tests.waiting import wait_until

API_KEY = "lsv2_pt_0123456789abcdef0123456789abcdef_0123456789"


@pytest.fixture
def server() -> Iterator[LangSmithServer]:
    with LangSmithServer(api_key=API_KEY) as srv:
        yield srv


def settings_for(server: LangSmithServer, **overrides: object) -> LangSmithSettings:
    values: dict[str, object] = {
        "enabled": True,
        "endpoint": server.url,
        "api_key": API_KEY,
        "project": "fleet",
        "retry_for_s": 60.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "request_timeout_s": 2.0,
        "concurrency": 4,
    }
    values.update(overrides)
    return LangSmithSettings(**values)  # type: ignore[arg-type]


def make_loop(
    client: redis.Redis, keys: Keys, settings: LangSmithSettings, *, name: str = "fwd-1"
) -> ForwardLoop:
    consumer = Consumer(client, keys, LANGSMITH_GROUP, name, claim_idle_ms=60_000)
    return ForwardLoop(consumer, settings, loop=loop_settings(settings, burst=True))


#: The calls these tests forward; each names its plan (or None).
RUN_CALL = {"prompt_tokens": 10, "completion_tokens": 5, "latency_ms": 20.0}


def pending(client: redis.Redis, keys: Keys) -> int:
    total = 0
    for stream in keys.streams:
        if client.exists(stream):
            total += int(client.xpending(stream, LANGSMITH_GROUP)["pending"])  # type: ignore[index]
    return total


def expected_ids(records: list[LLMTrace]) -> set[str]:
    ids = {str(r.trace_id) for r in records}
    ids |= {str(plan_root_id(r.plan_id, r.started_at.date())) for r in records if r.plan_id}
    return ids


def test_every_trace_arrives_once_as_runs_and_entries_are_acknowledged(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id="plan-a") for _ in range(4)] + [
        llm_trace(RUN_CALL, plan_id="plan-b"),
        llm_trace(RUN_CALL, plan_id=None),
    ]
    add_traces(redis_client, keys, records[:3])
    add_traces(redis_client, keys, records[3:])
    # Entries the persist group dead-letters: this group acknowledges them untouched.
    redis_client.xadd(keys.traces, {b"v": b"0", b"d": b"x"})
    bad_record = encode_lines(Kind.TRACE, [b'{"provider": 1}'], new_batch_id())
    redis_client.xadd(keys.traces, bad_record)  # type: ignore[arg-type]

    loop = make_loop(redis_client, keys, settings_for(server))
    assert API_KEY not in repr(loop)
    assert "api_key='***'" in repr(loop)
    loop.run(threading.Event())

    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    # Each plan root is posted once, however many calls hang under it.
    assert sum(server.recorded.conflicts.values()) == 0
    run = server.recorded.runs[str(records[0].trace_id)]
    assert run["trace_id"] == str(plan_root_id("plan-a", records[0].started_at.date()))
    assert run["session_name"] == "fleet"
    assert run["extra"]["metadata"]["usage_metadata"]["total_tokens"] == 15
    assert server.recorded.api_keys == {API_KEY}
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    assert loop.stats.records == len(records)


def test_metric_entries_are_acknowledged_without_a_request(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    samples = [
        MetricSample(key=key, labels=dict.fromkeys(key.spec.labels, "x"), value=1.0)
        for key in list(MetricKey)[:2]
    ]
    add_samples(redis_client, keys, samples)
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    assert server.run_ids() == set()
    assert [m for m, _ in server.recorded.requests if m == "POST"] == []
    assert pending(redis_client, keys) == 0


def test_a_record_sent_twice_is_the_same_run(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id="plan-a"), llm_trace(RUN_CALL, plan_id=None)]
    add_traces(redis_client, keys, records)
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    # The same records again (an emitter retry, a replay): LangSmith answers 409,
    # which counts as delivered, and keeps one run per id.
    add_traces(redis_client, keys, records)
    make_loop(redis_client, keys, settings_for(server), name="fwd-2").run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    assert sum(server.recorded.conflicts.values()) == 3
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []


def test_outage_answers_are_retried_until_langsmith_takes_the_runs(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [
        llm_trace(RUN_CALL, plan_id="plan-a"),
        llm_trace(RUN_CALL, plan_id=None),
        llm_trace(RUN_CALL, plan_id="plan-b"),
    ]
    add_traces(redis_client, keys, records)
    server.inject(
        Fault("status", status=503, count=2),
        Fault("status", status=500, count=1),
        Fault("status", status=429, retry_after="0.3", count=1),
        Fault("status", status=429, count=1),
        Fault("close", count=1),
        Fault("sleep", sleep_s=1.5, count=1),
        Fault("status", status=502, count=1),
    )
    # One request at a time, so that each fault meets exactly one attempt.
    settings = settings_for(server, request_timeout_s=0.5, concurrency=1)
    loop = make_loop(redis_client, keys, settings)
    loop.run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    assert loop.stats.retries == 8
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []


def test_a_refused_run_is_a_dead_letter_with_the_answer_and_replays(
    server: LangSmithServer,
    redis_client: redis.Redis,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loop_module, "DEAD_LETTER_LOG", DeadLetterLog())
    refused, accepted = llm_trace(RUN_CALL, plan_id=None), llm_trace(RUN_CALL, plan_id=None)
    add_traces(redis_client, keys, [refused, accepted])
    server.inject(Fault("status", status=422, count=1))
    make_loop(redis_client, keys, settings_for(server, concurrency=1)).run(threading.Event())
    said = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"]
    assert said[0].getMessage().startswith("group langsmith dead-lettered 1 record(s)")
    assert "LangSmith answered 422" in said[0].getMessage()

    assert server.run_ids() == {str(accepted.trace_id)}
    [(_, letter)] = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert "LangSmith answered 422" in letter.reason
    assert "injected" in letter.reason
    assert letter.record == encode_record(refused)
    assert letter.position == 0
    assert pending(redis_client, keys) == 0

    report = replay_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert len(report.replayed) == 1
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    assert server.run_ids() == {str(accepted.trace_id), str(refused.trace_id)}
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    assert pending(redis_client, keys) == 0


def test_many_records_in_parallel_with_faults_arrive_once(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id=f"plan-{i % 5}") for i in range(150)] + [
        llm_trace(RUN_CALL, plan_id=None) for _ in range(50)
    ]
    for start in range(0, len(records), 40):
        add_traces(redis_client, keys, records[start : start + 40])
    server.inject(
        Fault("status", status=503, count=30),
        Fault("status", status=429, retry_after="0.2", count=10),
        Fault("close", count=5),
    )
    loop = make_loop(redis_client, keys, settings_for(server, concurrency=8))
    loop.run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    assert loop.stats.retries >= 1
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    loop.close()


def test_a_refused_root_keeps_its_calls_back(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id="plan-z"), llm_trace(RUN_CALL, plan_id="plan-z")]
    add_traces(redis_client, keys, records)
    server.inject(Fault("status", status=422, count=1))
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    assert server.run_ids() == set()
    letters = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert [letter.position for _, letter in letters] == [0, 1]
    assert all("LangSmith answered 422" in letter.reason for _, letter in letters)


def test_after_retry_for_s_the_batch_becomes_dead_letters(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id=None), llm_trace(RUN_CALL, plan_id=None)]
    add_traces(redis_client, keys, records)
    server.inject(Fault("status", status=503, duration_s=600))
    loop = make_loop(redis_client, keys, settings_for(server, retry_for_s=0.5))
    loop.run(threading.Event())
    letters = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert len(letters) == 1
    reason = letters[0][1].reason
    assert "LangSmith kept failing for" in reason
    assert "(retry_for_s=0.5)" in reason
    assert "LangSmith answered 503" in reason
    assert letters[0][1].original is not None
    assert pending(redis_client, keys) == 0
    assert server.run_ids() == set()

    server.clear_faults()
    assert len(replay_dead_letters(redis_client, keys, LANGSMITH_GROUP).replayed) == 1
    make_loop(redis_client, keys, settings_for(server)).run(threading.Event())
    assert server.run_ids() == expected_ids(records)


class Ticks:
    """A clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_the_retry_window_spans_batches_so_a_long_outage_drains_quickly(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    for _ in range(3):
        add_traces(redis_client, keys, [llm_trace(RUN_CALL, plan_id=None)])
    server.inject(Fault("status", status=503, duration_s=600))
    loop = make_loop(redis_client, keys, settings_for(server, retry_for_s=1.5, concurrency=1))
    loop.clock = Ticks()
    loop.run(threading.Event())
    letters = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    assert len(letters) == 3
    # The first batch (one entry) waited out the window: tries 0, 1 and 2 s into the
    # outage. The next batch (the other two entries) met the same outage: one try for
    # the batch, then one for each entry alone, and no waiting.
    assert server.recorded.answers[503] == 3 + 1 + 2
    assert loop.stats.retries == 2
    assert pending(redis_client, keys) == 0


def test_the_retry_window_starts_again_once_langsmith_takes_a_run(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id=None) for _ in range(3)]
    for record in records:
        add_traces(redis_client, keys, [record])
    loop = make_loop(redis_client, keys, settings_for(server, retry_for_s=1.5, concurrency=1))
    loop.clock = Ticks()
    for _ in range(3):
        # One failure before each record: never two in a row, so never past the window.
        server.clear_faults()
        server.inject(Fault("status", status=503, count=1))
        loop.run(threading.Event())
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    assert server.run_ids() == expected_ids(records)
    assert server.recorded.answers[503] == 1


def test_stopping_while_langsmith_is_down_leaves_the_entry_pending(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    add_traces(redis_client, keys, [llm_trace(RUN_CALL, plan_id=None)])
    server.inject(Fault("status", status=503, duration_s=600))
    settings = settings_for(server)
    consumer = Consumer(redis_client, keys, LANGSMITH_GROUP, "fwd-stop", claim_idle_ms=60_000)
    loop = ForwardLoop(consumer, settings, loop=loop_settings(settings))
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: loop.stats.retries >= 2, 20, "two retries")
    finally:
        stop.set()
    thread.join(20)
    assert not thread.is_alive()
    assert loop.stats.retries >= 2
    assert loop.stats.ready is False
    assert pending(redis_client, keys) == 1
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []


def test_plan_roots_are_forgotten_beyond_the_cache_size(
    server: LangSmithServer,
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forwarder_module, "ROOT_CACHE_SIZE", 1)
    records = [
        llm_trace(RUN_CALL, plan_id="plan-a"),
        llm_trace(RUN_CALL, plan_id="plan-b"),
        llm_trace(RUN_CALL, plan_id="plan-a"),
    ]
    add_traces(redis_client, keys, records)
    make_loop(redis_client, keys, settings_for(server, concurrency=1)).run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    # Each root pushes the other out, so each call posts its root again: 409, one run.
    assert sum(server.recorded.conflicts.values()) == 3
    assert server.duplicates() == 0


def test_the_sender_uses_post_runs_and_raises_on_failure(server: LangSmithServer) -> None:
    sender = RunSender(settings_for(server))
    assert "***" in repr(sender)
    assert API_KEY not in repr(sender)
    record = llm_trace(RUN_CALL, plan_id=None)
    sender.send(llm_run(record, "fleet"))
    assert ("POST", "/runs") in server.recorded.requests
    server.inject(Fault("status", status=503, retry_after="2", count=1))
    with pytest.raises(ForwardingDeferred) as deferred:
        sender.send(llm_run(llm_trace(RUN_CALL, plan_id=None), "fleet"))
    assert deferred.value.retry_after_s == 2.0
    server.api_key = "another-key"
    with pytest.raises(ForwardingUnauthorized, match=r"HTTP 401.*LANGSMITH_API_KEY") as refused:
        sender.send(llm_run(llm_trace(RUN_CALL, plan_id=None), "fleet"))
    assert API_KEY not in str(refused.value) and "another-key" not in str(refused.value)
    sender.close()


def test_an_unreachable_langsmith_is_deferred() -> None:
    settings = LangSmithSettings(
        enabled=True, endpoint="http://127.0.0.1:9", api_key=API_KEY, request_timeout_s=1.0
    )
    with pytest.raises(ForwardingDeferred, match="cannot connect") as error:
        RunSender(settings).send(
            {"id": uuid.uuid4(), "name": "x", "inputs": {}, "run_type": "llm", "session_name": "p"}
        )
    assert API_KEY[:8] not in str(error.value)


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (requests.ReadTimeout("slow"), ForwardingDeferred, "did not answer in time"),
        (requests.ConnectionError("refused"), ForwardingDeferred, "cannot connect"),
        (ls_utils.LangSmithConnectionError("x"), ForwardingDeferred, "cannot connect"),
        (requests.TooManyRedirects("loop"), ForwardingDeferred, "request to LangSmith failed"),
        (ls_utils.LangSmithError("odd"), ForwardingDeferred, "LangSmithError"),
    ],
)
def test_errors_without_an_answer_are_deferred(
    error: Exception, kind: type[Exception], text: str
) -> None:
    classified = classify(error, run_id="r1")
    assert isinstance(classified, kind)
    assert text in str(classified)


def _http_error(status: int, headers: dict[str, str] | None = None) -> Exception:
    response = requests.Response()
    response.status_code = status
    response._content = b"  the\n answer  "
    response.headers.update(headers or {})
    try:
        raise requests.HTTPError("boom", response=response)
    except requests.HTTPError:
        try:
            raise ls_utils.LangSmithError("wrapped")
        except ls_utils.LangSmithError as wrapped:
            return wrapped


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ForwardingRejected),
        (404, ForwardingRejected),
        (408, ForwardingDeferred),
        (425, ForwardingDeferred),
        (429, ForwardingDeferred),
        (500, ForwardingDeferred),
        (504, ForwardingDeferred),
    ],
)
def test_answers_are_classified_by_status(status: int, kind: type[Exception]) -> None:
    classified = classify(_http_error(status, {"Retry-After": "5"}), run_id="r1")
    assert isinstance(classified, kind)
    assert str(classified) == f"LangSmith answered {status} for run r1: the answer"
    if isinstance(classified, ForwardingDeferred):
        assert classified.retry_after_s == 5.0


@pytest.mark.parametrize("status", [401, 403])
def test_key_refusals_are_one_message_naming_the_variable(status: int) -> None:
    first = classify(_http_error(status), run_id="r1")
    second = classify(_http_error(status), run_id="r2")
    assert isinstance(first, ForwardingUnauthorized)
    assert isinstance(first, ForwardingDeferred)  # retried, never a dead letter
    assert str(first) == str(second)  # the loop logs a new message only
    assert f"HTTP {status}" in str(first) and "LANGSMITH_API_KEY" in str(first)


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("  ") is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("inf") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("2026-01-01T12:00:30", now=now) is None
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:10 -0000", now=now) == 10.0


def test_settings_from_the_langsmith_variables() -> None:
    env = {
        "LANGCHAIN_TRACING_V2": "true",
        "LANGCHAIN_ENDPOINT": "http://127.0.0.1:1984/",
        "LANGCHAIN_API_KEY": "old-key",
        "LANGSMITH_API_KEY": "new-key",
        "LANGCHAIN_PROJECT": "agents",
        "FLEETTRACE_LANGSMITH_RETRY_FOR_S": "120",
        "FLEETTRACE_LANGSMITH_BACKOFF_MAX_S": "2.5",
        "FLEETTRACE_LANGSMITH_CONCURRENCY": "3",
    }
    settings = LangSmithSettings.from_env(env)
    assert settings.enabled is True
    assert settings.endpoint == "http://127.0.0.1:1984"
    assert settings.api_key == "new-key"
    assert settings.project == "agents"
    assert settings.retry_for_s == 120.0
    assert settings.backoff_max_s == 2.5
    assert settings.concurrency == 3
    assert "new-key" not in repr(settings)
    assert "new-key" not in str(settings)
    assert "api_key='***'" in repr(settings)


def test_settings_defaults_and_switches() -> None:
    off = LangSmithSettings.from_env({})
    assert off.enabled is False
    assert off.endpoint == "https://api.smith.langchain.com"
    assert off.project == "default"
    assert off.retry_for_s == 3600.0
    assert "api_key=None" in repr(off)
    assert LangSmithSettings.from_env({"LANGSMITH_TRACING": "true"}).enabled is True
    assert LangSmithSettings.from_env({"LANGSMITH_TRACING": "false"}).enabled is False
    assert LangSmithSettings.from_env({"LANGSMITH_TRACING_V2": "TRUE"}).enabled is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEETTRACE_LANGSMITH_RETRY_FOR_S": "an hour"}, "must be a number of seconds"),
        ({"FLEETTRACE_LANGSMITH_TIMEOUT_S": "0"}, "positive number"),
        ({"FLEETTRACE_LANGSMITH_BACKOFF_INITIAL_S": "nan"}, "positive number"),
        ({"LANGSMITH_ENDPOINT": "ftp://example.com"}, "http:// or https://"),
        ({"LANGSMITH_ENDPOINT": "http://user:pw@example.com"}, "must not carry credentials"),
        ({"FLEETTRACE_LANGSMITH_CONCURRENCY": "many"}, "whole number"),
        ({"FLEETTRACE_LANGSMITH_CONCURRENCY": "0"}, "between 1 and 32"),
    ],
)
def test_bad_settings_say_which(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as error:
        LangSmithSettings.from_env(env)
    assert "pw@" not in str(error.value)


def test_the_worker_builds_the_group_from_the_environment(
    server: LangSmithServer, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleettrace_worker.context import WorkerContext, WorkerSettings

    for name in ("LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    monkeypatch.setenv("LANGSMITH_ENDPOINT", server.url)
    monkeypatch.setenv("LANGSMITH_API_KEY", API_KEY)
    monkeypatch.setenv("FLEETTRACE_LANGSMITH_RETRY_FOR_S", "42")

    def settings() -> WorkerSettings:
        """Read at the edge, as the CLI does: the group takes them from its context."""
        return WorkerSettings.from_env(
            "redis://127.0.0.1:6379/0",
            "postgresql://postgres@127.0.0.1:5432/postgres",
            namespace=keys.namespace,
            consumer="ctx",
            block_ms=250,
            burst=True,
        )

    context = WorkerContext(settings())
    loop = langsmith_loop(context)
    assert isinstance(loop, ForwardLoop)
    assert loop.group == LANGSMITH_GROUP
    assert loop.consumer.name == "ctx"
    assert loop.langsmith.endpoint == server.url
    assert loop.langsmith.retry_for_s == 42.0
    assert loop.settings.batch_records == 200
    assert loop.settings.block_ms == 250
    assert loop.settings.burst is True
    loop.close()

    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    again = langsmith_loop(context)  # the settings were read once, at the edge
    assert again.langsmith.enabled is True
    again.close()
    with pytest.raises(ConfigurationError, match="LANGSMITH_TRACING=true"):
        langsmith_loop(WorkerContext(settings()))
    context.close()


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_dead_letters_nothing_and_everything_arrives_once_after_the_fix(
    server: LangSmithServer,
    redis_client: redis.Redis,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    records = [
        llm_trace(RUN_CALL, plan_id="plan-k"),
        llm_trace(RUN_CALL, plan_id="plan-k"),
        llm_trace(RUN_CALL, plan_id=None),
        llm_trace(RUN_CALL, plan_id="plan-l"),
    ]
    add_traces(redis_client, keys, records)
    if status == 401:
        server.api_key = "the-key-langsmith-knows"  # ours is wrong
    else:
        server.inject(Fault("status", status=403, duration_s=600))  # ours lacks rights
    # A window of half a second on a clock that moves a second per reading: any
    # failure counted towards retry_for_s would dead-letter the batch at once.
    loop = make_loop(redis_client, keys, settings_for(server, retry_for_s=0.5))
    loop.clock = Ticks()
    thread = threading.Thread(target=loop.run, args=(threading.Event(),))
    thread.start()
    try:
        wait_until(lambda: server.recorded.answers[status] >= 5, 30, f"five {status} answers")
        assert loop.stats.ready is False
        assert "LANGSMITH_API_KEY" in (loop.stats.last_error or "")
        assert pending(redis_client, keys) == 1  # the entry, in hand and unacknowledged
        assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
        assert server.run_ids() == set()
    finally:
        if status == 401:
            server.api_key = API_KEY  # the key is fixed
        else:
            server.clear_faults()
        thread.join(30)
    assert not thread.is_alive()
    assert server.run_ids() == expected_ids(records)
    assert server.duplicates() == 0
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, LANGSMITH_GROUP) == []
    assert loop.stats.ready is True
    said = [r for r in caplog.records if "LANGSMITH_API_KEY" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelname == "WARNING"
    assert API_KEY not in caplog.text
    loop.close()


def test_forwarding_on_without_a_key_does_not_build_the_group(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleettrace_worker.context import WorkerContext, WorkerSettings

    for prefix in ("LANGSMITH_", "LANGCHAIN_"):
        for name in ("TRACING_V2", "TRACING", "API_KEY"):
            monkeypatch.delenv(prefix + name, raising=False)
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    context = WorkerContext(
        WorkerSettings.from_env(
            "redis://127.0.0.1:6379/0", "postgresql://x", namespace=keys.namespace
        )
    )
    with pytest.raises(ConfigurationError) as error:
        langsmith_loop(context)
    assert str(error.value) == forwarder_module.MISSING_KEY_MESSAGE
    assert "LANGSMITH_API_KEY" in str(error.value)
    context.close()


def test_closing_the_loop_ends_its_request_threads_and_http_session(
    server: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(RUN_CALL, plan_id=None) for _ in range(12)]
    add_traces(redis_client, keys, records)
    loop = make_loop(redis_client, keys, settings_for(server, concurrency=4))
    loop.run(threading.Event())
    assert server.run_ids() == expected_ids(records)
    prefix = forwarder_module.REQUEST_THREAD_PREFIX
    threads = [t for t in loop._pool._threads if t.name.startswith(prefix)]  # type: ignore[attr-defined]
    assert threads and all(t.is_alive() for t in threads)
    session = loop.sender.client.session
    assert any(adapter.poolmanager.pools for adapter in session.adapters.values())
    loop.close()
    loop.close()  # twice is harmless
    assert not any(t.is_alive() for t in threads)
    assert all(not adapter.poolmanager.pools for adapter in session.adapters.values())
    # The client no longer pins its session until the process ends.
    assert loop.sender.client._atexit_handler is None
