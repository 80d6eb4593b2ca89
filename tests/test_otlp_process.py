"""``fleettrace worker`` with the ``otlp`` group, as a process, configured by the
standard OpenTelemetry variables."""

from __future__ import annotations

import pytest
import redis

from fleettrace.keys import Keys
from fleettrace_worker.forward.otlp.group import NOT_CONFIGURED_MESSAGE
from tests.factories import add_traces
from tests.otlp_receiver import OtlpReceiver
from tests.test_otlp import SECRET, llm_spans, trace
from tests.worker_helpers import fleettrace, migrated, trace_rows, worker_env


@pytest.mark.slow
def test_worker_only_otlp_exports_with_the_standard_variables(
    redis_url: str, redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    records = [trace() for _ in range(3)]
    add_traces(redis_client, keys, records)
    with OtlpReceiver() as receiver:
        env = worker_env(redis_url, database_url, keys)
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_EXPORTER_OTLP_HEADERS=f"Authorization=Bearer%20{SECRET}",
            OTEL_SERVICE_NAME="fleet-a",
            FLEETTRACE_LOG_LEVEL="DEBUG",
        )
        done = fleettrace("worker", "--only", "otlp", "--burst", env=env)
        assert done.returncode == 0, done.stderr
        assert len(llm_spans(receiver)) == 3
        assert receiver.received.resources[0]["service.name"] == "fleet-a"
        assert receiver.received.headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.slow
def test_worker_runs_otlp_beside_persist_when_an_endpoint_is_set(
    redis_url: str, redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    add_traces(redis_client, keys, [trace(), trace()])
    with OtlpReceiver() as receiver:
        env = worker_env(redis_url, migrated(database_url), keys)
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = receiver.traces_url
        done = fleettrace("worker", "--burst", env=env)
        assert done.returncode == 0, done.stderr
        assert len(llm_spans(receiver)) == 2
    assert trace_rows(database_url) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, NOT_CONFIGURED_MESSAGE),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
            "speaks http/protobuf only",
        ),
    ],
)
def test_worker_only_otlp_without_a_usable_endpoint_is_one_clear_error(
    redis_url: str, keys: Keys, database_url: str, extra: dict[str, str], message: str
) -> None:
    env = {**worker_env(redis_url, database_url, keys), **extra}
    done = fleettrace("worker", "--only", "otlp", "--burst", env=env)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
