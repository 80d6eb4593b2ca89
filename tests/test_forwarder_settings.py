"""The LangSmith settings from the environment, and the worker building the
``langsmith`` group from them (or not, without a key)."""

from __future__ import annotations

import pytest

from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace_worker.forward.langsmith import group as forwarder_module
from fleettrace_worker.forward.langsmith.group import ForwardLoop, langsmith_loop
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.keys import LANGSMITH_GROUP
from tests.langsmith_server import (
    API_KEY,
    LangSmithServer,
    langsmith_server,  # noqa: F401 (the fixture "server")
)


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
