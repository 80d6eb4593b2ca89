"""The worker side's settings from the environment (fleettrace_worker.settings): one
object with a group per part, every bad value one line naming its variable, no secret
in any repr or str, and the CLI refusing a bad variable with one line and exit 2."""

from __future__ import annotations

import pytest

from fleettrace.errors import ConfigurationError
from fleettrace_worker.cli import EXIT_USAGE, main
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.settings import read_environment

SECRET = "pw-worker-5e9a"
TOKEN = "dashboard-token-" + SECRET

SECRET_ENV = {
    "FLEETTRACE_REDIS_URL": f"redis://worker:{SECRET}@127.0.0.1:6379/0",
    "DATABASE_URL": f"postgresql://ft:{SECRET}@127.0.0.1:5432/db?sslpassword={SECRET}",
    "FLEETTRACE_DASHBOARD_TOKEN": TOKEN,
    "LANGSMITH_TRACING": "true",
    "LANGSMITH_API_KEY": "lsv2-" + SECRET,
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
    "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={SECRET}",
}


def test_one_object_holds_every_group_and_shows_no_secret() -> None:
    env = read_environment({**SECRET_ENV, "FLEETTRACE_WORKER_BATCH_RECORDS": "500"})
    assert env.redis_url == SECRET_ENV["FLEETTRACE_REDIS_URL"]
    assert env.database_url == SECRET_ENV["DATABASE_URL"]
    assert env.dashboard.token_value() == TOKEN
    assert env.langsmith.api_key == "lsv2-" + SECRET
    assert env.otlp.headers == {"x-api-key": SECRET}
    assert env.worker.batch_records == 500
    settings = WorkerSettings.from_environment(env, "redis://r", "postgresql://p")
    assert settings.langsmith is env.langsmith
    assert settings.otlp is env.otlp
    assert settings.batch_records == 500
    texts = [repr(env), str(env), repr(env.dashboard), str(env.dashboard), repr(settings)]
    for text in texts:
        assert SECRET not in text, text
    assert "worker:***@127.0.0.1" in repr(env)
    assert "ft:***@127.0.0.1" in repr(env)


def test_the_langsmith_and_otel_precedence_rules_hold_through_the_one_object() -> None:
    env = read_environment(
        {
            "LANGCHAIN_TRACING_V2": "true",
            "LANGSMITH_ENDPOINT": "http://own:1984",
            "LANGCHAIN_ENDPOINT": "http://fallback:1984",
            "LANGCHAIN_API_KEY": "k",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318/",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/t",
        }
    )
    assert env.langsmith.enabled
    assert env.langsmith.endpoint == "http://own:1984"
    assert env.langsmith.api_key == "k"
    assert env.otlp.endpoint == "http://traces:4318/t"
    off = read_environment({})
    assert not off.langsmith.enabled
    assert not off.otlp.enabled
    assert off.log_level == "INFO"
    assert read_environment({"FLEETTRACE_LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # not a number
        (
            "FLEETTRACE_WORKER_BATCH_RECORDS",
            "many",
            "FLEETTRACE_WORKER_BATCH_RECORDS must be a whole number, got 'many'",
        ),
        (
            "FLEETTRACE_WORKER_GROUP_MAX_AGE_S",
            "1h",
            "FLEETTRACE_WORKER_GROUP_MAX_AGE_S must be a number, got '1h'",
        ),
        (
            "FLEETTRACE_LANGSMITH_RETRY_FOR_S",
            "soon",
            "FLEETTRACE_LANGSMITH_RETRY_FOR_S must be a number of seconds, got 'soon'",
        ),
        # negative, zero, out of range
        (
            "FLEETTRACE_WORKER_BLOCK_MS",
            "-1",
            "FLEETTRACE_WORKER_BLOCK_MS must be 0 or more, got '-1'",
        ),
        (
            "FLEETTRACE_WORKER_CLAIM_IDLE_MS",
            "0",
            "FLEETTRACE_WORKER_CLAIM_IDLE_MS must be above 0, got '0'",
        ),
        (
            "FLEETTRACE_WORKER_METRICS_PLANS",
            "5000",
            "FLEETTRACE_WORKER_METRICS_PLANS must be at most 1000, got '5000'",
        ),
        (
            "FLEETTRACE_OTLP_BACKOFF_MAX_S",
            "-3",
            "FLEETTRACE_OTLP_BACKOFF_MAX_S must be a positive number, got '-3'",
        ),
        # bad URL
        (
            "LANGSMITH_ENDPOINT",
            "ftp://smith",
            "LangSmith endpoint 'ftp://smith' must be an http:// or https:// URL",
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "collector:4318",
            "OTLP endpoint 'collector:4318/v1/traces' must be an http:// or https:// URL",
        ),
        # bad bool, bad choice
        (
            "FLEETTRACE_OTLP_METRICS",
            "yes",
            "FLEETTRACE_OTLP_METRICS must be true or false, got 'yes'",
        ),
        (
            "FLEETTRACE_LOG_LEVEL",
            "loud",
            "FLEETTRACE_LOG_LEVEL must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR' or "
            "'CRITICAL', got 'LOUD'",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_its_variable(
    variable: str, value: str, message: str
) -> None:
    env = {variable: value}
    if variable.startswith("LANGSMITH_"):
        env["LANGSMITH_TRACING"] = "true"
    with pytest.raises(ConfigurationError) as caught:
        read_environment(env)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_a_bad_token_or_url_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        read_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://u:{SECRET}@collector:4318"})
    assert SECRET not in str(caught.value)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(caught.value)


def test_the_worker_command_refuses_a_bad_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLEETTRACE_WORKER_MAX_DELIVERIES", "lots")
    code = main(["worker", "--burst", "--redis-url", "redis://127.0.0.1:1/0"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.splitlines() == [
        "fleettrace worker: FLEETTRACE_WORKER_MAX_DELIVERIES must be a whole number, got 'lots'"
    ]
