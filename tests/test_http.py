"""/healthz, /readyz and /metrics of a worker run in this process, against the
machine's Redis and a fresh database; live metrics come from a real emitter."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.errors import ConfigurationError
from fleettrace.metrics import MetricKey
from fleettrace_worker.http import metric_name, parse_address, serve
from fleettrace_worker.runner import Worker, WorkerSettings
from tests.servers import free_port
from tests.worker_helpers import make_trace, migrated, trace_rows, wait_for


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def running(redis_url, keys, database_url) -> Iterator[tuple[Worker, str, str]]:
    db = migrated(database_url)
    port = free_port()
    settings = WorkerSettings(
        redis_url,
        db,
        namespace=keys.namespace,
        consumer="h1",
        block_ms=100,
        http=f"127.0.0.1:{port}",
    )
    worker = Worker(settings)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()))
    thread.start()
    yield worker, f"http://127.0.0.1:{port}", db
    worker.stop.set()
    thread.join(30)
    assert result == [0]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.redis_version(7, 0)  # the lag gauge needs XINFO GROUPS lag (7.0)
def test_endpoints_report_the_worker_and_the_fleet(running, redis_url, keys) -> None:
    _, base, db = running
    emitter = Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace))
    for i in range(20):
        emitter.record(make_trace(i))
    for value in (0.5, 3.0, 3.0, 100_000.0):
        emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, value, {"tool": "grep"})
    emitter.observe(MetricKey.CONTEXT_TOKENS_USED, 1234.0)
    assert emitter.flush(30)
    emitter.close()
    wait_for(lambda: trace_rows(db) == 20, 60, "rows")
    wait_for(lambda: _get(f"{base}/readyz")[0] == 200, 30, "ready")
    assert _get(f"{base}/healthz")[::2] == (200, "ok\n")
    assert _get(f"{base}/readyz")[::2] == (200, "ready\n")
    assert _get(f"{base}/nope")[0] == 404
    status, content_type, text = _get(f"{base}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    found = _samples(text)
    group = (("group", "persist"),)
    assert found[("fleettrace_worker_records_total", group)] == 25.0
    assert found[("fleettrace_worker_ready", ())] == 1.0
    assert found[("fleettrace_worker_dead_letters_total", group)] == 0.0
    assert found[("fleettrace_worker_batch_latency_seconds_count", group)] >= 1
    assert ("fleettrace_worker_batch_latency_seconds_bucket", (*group, ("le", "+Inf"))) in found
    pending = ("fleettrace_worker_pending", (("group", "persist"), ("stream", keys.traces)))
    assert found[pending] == 0.0
    lag = ("fleettrace_worker_lag", (("group", "persist"), ("stream", keys.traces)))
    assert found[lag] == 0.0
    tool = metric_name(MetricKey.TOOL_INVOCATION_DURATION_MS)
    assert tool == "fleettrace_tool_invocation_duration_ms"
    assert found[(f"{tool}_count", (("tool", "grep"),))] == 4.0
    assert found[(f"{tool}_sum", (("tool", "grep"),))] == 100_006.5
    assert found[(f"{tool}_bucket", (("le", "1.0"), ("tool", "grep")))] == 1.0
    assert found[(f"{tool}_bucket", (("le", "5.0"), ("tool", "grep")))] == 3.0
    assert found[(f"{tool}_bucket", (("le", "60000.0"), ("tool", "grep")))] == 3.0
    assert found[(f"{tool}_bucket", (("le", "+Inf"), ("tool", "grep")))] == 4.0
    assert found[("fleettrace_context_tokens_used", ())] == 1234.0
    tokens = [
        value
        for (name, labels), value in found.items()
        if name == "fleettrace_actor_token_usage_total" and ("token_type", "prompt") in labels
    ]
    assert sum(tokens) == sum(make_trace(i).prompt_tokens for i in range(20))
    assert "# TYPE fleettrace_tool_invocation_duration_ms histogram" in text


def test_not_ready_and_metrics_without_redis_figures(redis_url, keys, database_url) -> None:
    worker = Worker(WorkerSettings(redis_url, database_url, namespace=keys.namespace))
    port = free_port()
    server = serve(f"127.0.0.1:{port}", worker, redis.Redis.from_url(redis_url))
    try:
        status, _, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert (status, body) == (503, "not ready: starting or stopping\n")
        redis_client = redis.Redis.from_url(redis_url)
        redis_client.set(keys.traces, "not a stream")
        status, _, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert "fleettrace_worker_ready 0.0" in text
        assert "fleettrace_worker_pending" not in text
        redis_client.close()
    finally:
        server.shutdown()


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("0.0.0.0", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", "host:99999", "host:port"):
        with pytest.raises(ConfigurationError, match="--http must be HOST:PORT"):
            parse_address(bad)


def test_a_busy_port_is_one_clear_error(redis_url, keys, database_url) -> None:
    worker = Worker(WorkerSettings(redis_url, database_url, namespace=keys.namespace))
    port = free_port()
    server = serve(f"127.0.0.1:{port}", worker, redis.Redis.from_url(redis_url))
    try:
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(f"127.0.0.1:{port}", worker, redis.Redis.from_url(redis_url))
    finally:
        server.shutdown()
