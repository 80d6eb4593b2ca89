"""Where URLs come from and how a bad one is refused: pure functions, no server."""

from __future__ import annotations

import pytest

from fleettrace.connection import connect_redis, redact_url
from fleettrace.errors import ConfigurationError
from fleettrace.settings import first_set, redis_url_from_env
from fleettrace_worker.store.settings import database_url_from_env


def test_fleettraces_own_variable_wins_over_the_conventional_one() -> None:
    env = {"FLEETTRACE_REDIS_URL": "redis://a:6379/0", "REDIS_URL": "redis://b:6379/0"}
    assert redis_url_from_env(env) == "redis://a:6379/0"
    env = {"FLEETTRACE_DATABASE_URL": "postgresql://a/x", "DATABASE_URL": "postgresql://b/y"}
    assert database_url_from_env(env) == "postgresql://a/x"


def test_a_blank_variable_counts_as_unset() -> None:
    env = {"FLEETTRACE_REDIS_URL": "  ", "REDIS_URL": " redis://b:6379/0 "}
    assert redis_url_from_env(env) == "redis://b:6379/0"
    assert first_set(("A", "B"), {"A": "", "B": " "}) is None
    assert database_url_from_env({}) is None


def test_first_set_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETTRACE_TEST_FIRST_SET", "yes")
    assert first_set(("FLEETTRACE_TEST_UNSET_VARIABLE", "FLEETTRACE_TEST_FIRST_SET")) == "yes"


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://agent:s3cret@host:6380/1") == "redis://agent:***@host:6380/1"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    assert redact_url("redis://agent@host:6379/0") == "redis://agent@host:6379/0"
    assert redact_url("redis://:s3cret@host:bad/0") == "redis://:***@host:bad/0"


@pytest.mark.parametrize("url", ["http://host:6379", "host:6379", "postgresql://host/db"])
def test_a_url_of_another_scheme_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigurationError, match="must start with redis://"):
        connect_redis(url)
    with pytest.raises(ConfigurationError) as caught:
        connect_redis("http://user:hunter2@host:6379")
    assert "hunter2" not in str(caught.value)


def test_a_malformed_redis_url_is_a_configuration_error_without_its_password() -> None:
    with pytest.raises(ConfigurationError, match="is not valid") as caught:
        connect_redis("redis://user:hunter2@host:notaport/0")
    assert "hunter2" not in str(caught.value)
