"""Secrets stay secret: the whole pipeline (emitter, worker with LangSmith forwarding,
CLI) runs with known Redis ACL passwords, a PostgreSQL password (scram-sha-256) and
a LangSmith API key, at DEBUG logging, through refusals (wrong passwords, LangSmith
401 and 503), timeouts and server restarts; then every log line, exception text,
dead-letter reason, ``/metrics`` and ``/readyz`` body, ``--help`` output and settings
repr is searched for them.

Everything runs on private servers: ACL users are never made on the shared Redis.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator

import psycopg
import pytest
import redis

from fleettrace.batch_script import load_library
from fleettrace.connection import connect_redis
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.environment import redact_url
from fleettrace.errors import FleettraceError
from fleettrace.keys import Keys
from fleettrace_worker.cli import COMMANDS
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.forward.langsmith.group import ForwardLoop
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.keys import GROUPS, LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker.store.database import connect, create_pool, parse_url
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters
from tests.factories import numbered_trace
from tests.langsmith_server import Fault, LangSmithServer
from tests.servers import PrivatePostgres, PrivateRedis, free_port
from tests.waiting import wait_until
from tests.worker_helpers import (
    finished,
    fleettrace,
    fleettrace_here,
    http_get,
    start_fleettrace,
    start_worker,
    worker_env,
)

pytestmark = pytest.mark.timeout(600)

ADMIN_PASSWORD = "adm1n-Pw-" + "d41d8cd98f00b204e980"
AGENT_PASSWORD = "ag3nt-Pw-" + "9e107d9d372bb6826bd8"
WORKER_PASSWORD = "w0rker-Pw-" + "e4d909c290d0fb1ca068"
PG_PASSWORD = "pg-Pw-" + "2fd4e1c67a2d28fced84"
WRONG_PASSWORD = "wr0ng-Pw-" + "de9f2c7fd25e1b3afad3"
API_KEY = "lsv2_sk_" + "0cc175b9c0f1b6a831c399e269772661" + "_92eb5ffee6"
SECRETS = (ADMIN_PASSWORD, AGENT_PASSWORD, WORKER_PASSWORD, PG_PASSWORD, WRONG_PASSWORD, API_KEY)


def leaks(text: str) -> list[str]:
    """The secrets ``text`` shows, whole or in part (their first or last 10 characters:
    the langsmith client's own errors show a key's tail)."""
    found = []
    for secret in SECRETS:
        if any(part in text for part in (secret, secret[:10], secret[-10:])):
            found.append(secret)
    return found


def _user(name: str, password: str) -> tuple[str, ...]:
    return ("--user", name, "on", f">{password}", "~*", "&*", "+@all")


@pytest.fixture
def secure_redis() -> Iterator[PrivateRedis]:
    """A Redis whose default user is off: an admin, an agent and a worker user, each
    with a password, declared on the command line so that they survive a restart."""
    server = PrivateRedis(
        extra_args=(
            "--user",
            "default",
            "off",
            *_user("admin", ADMIN_PASSWORD),
            *_user("agent", AGENT_PASSWORD),
            *_user("worker", WORKER_PASSWORD),
        )
    )
    server.start()
    # Its default user is off, so the function library is loaded as the admin, as
    # `fleettrace migrate` would be run by an operator.
    admin = redis.Redis(port=server.port, username="admin", password=ADMIN_PASSWORD)
    load_library(admin)
    admin.close()
    yield server
    server.close()


@pytest.fixture
def secure_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL that asks for a scram-sha-256 password over TCP, with a role
    ``fleettrace`` owning a database ``fleettrace``."""
    server = PrivatePostgres()
    server.write_hba(("local all all trust", "host all all 127.0.0.1/32 scram-sha-256"))
    server.start()
    with psycopg.connect(
        f"postgresql://postgres@/postgres?host={server.dir}&port={server.port}", autocommit=True
    ) as admin:
        admin.execute(f"CREATE ROLE fleettrace LOGIN PASSWORD '{PG_PASSWORD}'")
        admin.execute("CREATE DATABASE fleettrace OWNER fleettrace")
    yield server
    server.close()


def _redis_url(server: PrivateRedis, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def _pg_url(server: PrivatePostgres, password: str = PG_PASSWORD) -> str:
    return f"postgresql://fleettrace:{password}@127.0.0.1:{server.port}/fleettrace"


def _rows(db: str) -> int:
    try:
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT count(*) FROM llm_traces").fetchone()
    except psycopg.Error:
        return -1
    assert row is not None
    return int(row[0])


def _emit(url: str, keys: Keys, start: int, count: int) -> Emitter:
    emitter = Emitter(
        EmitterSettings(
            redis_url=url, namespace=keys.namespace, retry_initial_s=0.01, retry_max_s=0.1
        )
    )
    for i in range(start, start + count):
        emitter.record(numbered_trace(i))
    return emitter


@pytest.mark.slow
def test_no_secret_in_any_log_error_dead_letter_metrics_help_or_repr(
    secure_redis: PrivateRedis,
    secure_postgres: PrivatePostgres,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = Keys("secrets")
    agent_url = _redis_url(secure_redis, "agent", AGENT_PASSWORD)
    worker_url = _redis_url(secure_redis, "worker", WORKER_PASSWORD)
    admin = redis.Redis.from_url(_redis_url(secure_redis, "admin", ADMIN_PASSWORD))
    db = _pg_url(secure_postgres)
    texts: dict[str, str] = {}
    wrong_redis = _redis_url(secure_redis, "worker", WRONG_PASSWORD)
    wrong_pg = _pg_url(secure_postgres, WRONG_PASSWORD)
    # The CLI refused a login, in processes of their own (each must say so in one line
    # on stderr), started at once and read before the servers restart.
    refusal_env = {
        **worker_env(worker_url, db, keys),
        "FLEETTRACE_LOG_LEVEL": "DEBUG",
        "LANGSMITH_TRACING": "true",
        "LANGSMITH_API_KEY": API_KEY,
    }
    refused_cli = {
        "metrics, wrong password": start_fleettrace(
            "metrics", env={**refusal_env, "FLEETTRACE_REDIS_URL": wrong_redis}
        ),
        "traces, wrong password": start_fleettrace(
            "traces", "list", env={**refusal_env, "FLEETTRACE_DATABASE_URL": wrong_pg}
        ),
    }

    # The agent side: a good password, then a wrong one (counted, never raised).
    with _emit(agent_url, keys, 0, 30) as emitter:
        assert emitter.flush(10)
        texts["emitter repr"] = f"{emitter!r} {emitter.settings!r} {emitter.stats!r}"
    refused = _emit(_redis_url(secure_redis, "agent", WRONG_PASSWORD), keys, 100, 5)
    assert refused.flush(0.5) is False
    assert refused.stats.send_failures >= 1
    texts["emitter refused"] = f"{refused.stats.last_error} {refused!r} {refused.settings!r}"
    refused.close(0.2)

    with LangSmithServer(api_key=API_KEY) as langsmith:
        http = f"127.0.0.1:{free_port()}"
        env = worker_env(worker_url, db, keys)
        env.update(
            FLEETTRACE_LOG_LEVEL="DEBUG",
            LANGSMITH_TRACING="true",
            LANGSMITH_API_KEY=API_KEY,
            LANGSMITH_ENDPOINT=langsmith.url,
            FLEETTRACE_LANGSMITH_RETRY_FOR_S="1",
            FLEETTRACE_LANGSMITH_BACKOFF_INITIAL_S="0.05",
            FLEETTRACE_LANGSMITH_BACKOFF_MAX_S="0.2",
            FLEETTRACE_LANGSMITH_TIMEOUT_S="0.5",
            FLEETTRACE_LANGSMITH_CONCURRENCY="1",
        )
        migrate = fleettrace_here("migrate", env=env, monkeypatch=monkeypatch, capsys=capsys)
        assert migrate.returncode == 0, migrate.stderr
        texts["migrate"] = migrate.stdout + migrate.stderr

        # LangSmith: refusing the key (401), then unavailable (503) past the retry window,
        # then too slow to answer, then fine.
        langsmith.inject(
            Fault("status", status=401, duration_s=1.0),
            Fault("status", status=503, duration_s=3),
            Fault("sleep", sleep_s=1.0, count=2),
        )
        worker = start_worker(
            "--consumer", "w-secrets", "--block-ms", "200", "--http", http, env=env
        )
        try:
            wait_until(lambda: _rows(db) == 30, 120, "the first rows")
            wait_until(
                lambda: admin.xlen(keys.dead_letters(LANGSMITH_GROUP)) > 0,
                120,
                "a LangSmith dead letter",
            )
            for path in ("/metrics", "/readyz", "/healthz"):
                texts[f"GET {path}"] = http_get(f"http://{http}{path}")[1]

            for name, process in refused_cli.items():
                texts[name] = _one_line(finished(process))
            # Redis restarts: the worker waits, not ready, and carries on.
            secure_redis.stop()
            wait_until(lambda: http_get(f"http://{http}/readyz")[0] == 503, 60, "not ready")
            texts["readyz without Redis"] = http_get(f"http://{http}/readyz")[1]
            secure_redis.start()
            wait_until(lambda: http_get(f"http://{http}/readyz")[0] == 200, 60, "ready again")

            # PostgreSQL restarts while records wait.
            secure_postgres.stop()
            with _emit(agent_url, keys, 200, 10) as emitter:
                assert emitter.flush(10)
            wait_until(lambda: http_get(f"http://{http}/readyz")[0] == 503, 60, "not ready")
            texts["readyz without PostgreSQL"] = http_get(f"http://{http}/readyz")[1]
            texts["GET /metrics, PostgreSQL down"] = http_get(f"http://{http}/metrics")[1]
            secure_postgres.start()
            wait_until(lambda: _rows(db) == 40, 120, "the rows after the restarts")
            texts["GET /metrics at the end"] = http_get(f"http://{http}/metrics")[1]
        finally:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGTERM)
            out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        texts["worker output"] = out + err
        # DEBUG logging really was on, so the scan read what a debugging operator sees.
        assert " DEBUG " in err
        # The 401 was met: a key refusal is a configuration problem, logged (naming the
        # variable, never its value) and retried, not a dead letter.
        assert "401" in err and "LANGSMITH_API_KEY" in err

        # Workers refused a login, started now and read after the calls below: a worker
        # refused by the database says so after the pool's wait (10 s), which those
        # calls use meanwhile.
        refused_workers = {
            "worker, wrong Redis password": start_fleettrace(
                "worker", "--burst", env={**env, "FLEETTRACE_REDIS_URL": wrong_redis}
            ),
            "worker, wrong PostgreSQL password": start_fleettrace(
                "worker", "--burst", env={**env, "FLEETTRACE_DATABASE_URL": wrong_pg}
            ),
        }

        # In-process: the settings and objects an operator might print or log.
        worker_settings = WorkerSettings.from_env(worker_url, db, env)
        langsmith_settings = LangSmithSettings.from_env(env)
        client = connect_redis(worker_url)
        pool = create_pool(db, min_size=1, max_size=1)
        forward = ForwardLoop(Consumer(client, keys, LANGSMITH_GROUP, "w"), langsmith_settings)
        texts["reprs"] = (
            " ".join(
                repr(o)
                for o in (
                    worker_settings,
                    langsmith_settings,
                    client,
                    pool,
                    forward,
                    forward.sender,
                    Consumer(client, keys, PERSIST_GROUP, "w"),
                )
            )
            + f" {worker_settings} {langsmith_settings}"
        )
        pool.close()
        client.close()
        errors = []
        for call in (
            lambda: connect(_pg_url(secure_postgres, WRONG_PASSWORD)),
            lambda: list_dead_letters(
                connect_redis(_redis_url(secure_redis, "worker", WRONG_PASSWORD)),
                keys,
                PERSIST_GROUP,
            ),
        ):
            with pytest.raises(FleettraceError) as raised:
                call()
            errors.append(f"{raised.value!s} {raised.value!r}")
        texts["exceptions"] = " ".join(errors)

        # The CLI, with every secret in its environment (replaying the dead letters
        # last). Called in this process with the CLI's environment as the whole process
        # environment: the commands print what they would print in a process of their
        # own, without an interpreter's start-up each; their log records reach
        # ``caplog`` (scanned below) at DEBUG.
        cli_env = {**env, "FLEETTRACE_REDIS_URL": worker_url}
        for args in (
            ("metrics",),
            ("metrics", "--json"),
            ("traces", "list"),
            ("traces", "cost"),
            ("dlq", "list", "--group", LANGSMITH_GROUP),
            ("dlq", "list", "--group", LANGSMITH_GROUP, "--json"),
            ("worker", "--check", "--consumer", "w-secrets"),
            ("--help",),
            *((name, "--help") for name in COMMANDS),
            ("traces", "list", "--help"),
            ("dlq", "replay", "--help"),
        ):
            done = fleettrace_here(*args, env=cli_env, monkeypatch=monkeypatch, capsys=capsys)
            texts[f"fleettrace {' '.join(args)}"] = done.stdout + done.stderr
        for name, process in refused_workers.items():
            texts[name] = _refused_at_debug(finished(process))

    reasons = []
    for group in GROUPS:
        for _, letter in list_dead_letters(admin, keys, group):
            reasons.append(f"{letter.reason} {letter!r}")
    assert reasons and not any("401" in reason for reason in reasons), reasons
    texts["dead letters"] = " ".join(reasons)
    replay = ("dlq", "replay", "--group", LANGSMITH_GROUP, "--all")
    done = fleettrace_here(*replay, env=cli_env, monkeypatch=monkeypatch, capsys=capsys)
    texts[f"fleettrace {' '.join(replay)}"] = done.stdout + done.stderr

    admin.close()
    texts["log records"] = caplog.text

    found = {name: leaks(text) for name, text in texts.items() if leaks(text)}
    assert found == {}
    # The scan looked at real output: the refusals said what was refused, the calls
    # in this process printed what they print.
    assert texts["fleettrace --help"].startswith("usage: ")
    assert all(texts[f"fleettrace {name} --help"].startswith("usage: ") for name in COMMANDS)
    assert LANGSMITH_GROUP in texts[f"fleettrace dlq list --group {LANGSMITH_GROUP} --json"]
    assert "invalid username-password pair" in texts["metrics, wrong password"]
    assert "password authentication failed" in texts["traces, wrong password"]


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stdout + result.stderr


def _refused_at_debug(result: subprocess.CompletedProcess[str]) -> str:
    """A worker refused at DEBUG logging: a line says why, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("fleettrace worker: ") for line in lines), result.stderr
    return result.stdout + result.stderr


def test_passwords_in_url_queries_and_key_value_strings_are_hidden(
    secure_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py takes ``password`` (and ``ssl_password``, the client key's passphrase)
    from a URL's query as well as from its user info, and libpq takes ``password`` and
    ``sslpassword`` from the query or a ``key=value`` string: every form is hidden."""
    caplog.set_level(logging.DEBUG)
    keys = Keys("secrets-query")
    base = f"redis://agent@127.0.0.1:{secure_redis.port}/0"
    # The form works: redis-py logs in with the password from the query.
    with Emitter(EmitterSettings(redis_url=f"{base}?password={AGENT_PASSWORD}")) as emitter:
        emitter.record(numbered_trace(1))
        assert emitter.flush(10)
        assert emitter.stats.send_failures == 0
        texts = [repr(emitter), repr(emitter.settings)]
    refused = _emit(f"{base}?password={WRONG_PASSWORD}", keys, 0, 3)
    assert refused.flush(0.5) is False
    texts += [repr(refused), repr(refused.settings), str(refused.stats.last_error)]
    refused.close(0.2)
    tls = (
        f"rediss://agent@127.0.0.1:{secure_redis.port}/0?ssl_cert_reqs=required"
        f"&ssl_keyfile=/etc/ssl/client.key&ssl_password={API_KEY}&password={AGENT_PASSWORD}"
    )
    texts += [repr(EmitterSettings(redis_url=tls)), repr(connect_redis(tls, check_files=False))]
    with pytest.raises(FleettraceError) as missing_key:  # the file is named, no secret
        connect_redis(tls)
    assert "/etc/ssl/client.key (ssl_keyfile of the Redis URL)" in str(missing_key.value)
    texts.append(str(missing_key.value))
    with pytest.raises(FleettraceError) as bad_port:
        connect_redis(f"redis://agent@127.0.0.1:port/0?password={AGENT_PASSWORD}")
    texts.append(str(bad_port.value))
    # libpq quotes the piece of a URL it cannot read, which may be the password.
    spaced = f"{PG_PASSWORD[:4]} {PG_PASSWORD[4:]}"
    for broken in (
        f"postgresql://fleettrace:{spaced}@127.0.0.1:5432/db",
        f"postgresql://fleettrace@127.0.0.1:5432/db?password={spaced}",
    ):
        with pytest.raises(FleettraceError, match="not valid") as bad_database_url:
            parse_url(broken)
        texts.append(str(bad_database_url.value))
        result = fleettrace("migrate", "--database-url", broken, env=dict(os.environ))
        texts.append(_one_line(result))
    for database_url in (
        f"postgresql://fleettrace@127.0.0.1:5432/db?password={PG_PASSWORD}",
        f"postgresql://fleettrace:{PG_PASSWORD}@127.0.0.1:5432/db?sslpassword={WORKER_PASSWORD}",
        f"host=127.0.0.1 user=fleettrace password={PG_PASSWORD} sslpassword={WORKER_PASSWORD}",
        f"host=127.0.0.1 user=fleettrace password='{PG_PASSWORD}' dbname=db",
    ):
        settings = WorkerSettings(tls, database_url)
        texts += [repr(settings), str(settings)]
    texts.append(caplog.text)
    assert [leaks(text) for text in texts if leaks(text)] == []
    # The masks leave what an operator needs to see.
    shown = repr(WorkerSettings(tls, "host=127.0.0.1 user=ft password=x dbname=db"))
    assert "ssl_keyfile=/etc/ssl/client.key" in shown
    assert "password=***" in shown
    assert "ssl_password=***" in shown
    assert "host=127.0.0.1" in shown and "user=ft" in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:pw@h", "redis://:***@h"),
        ("redis://u:pa/ss@h/0", "redis://u:***@h/0"),
        ("redis://u:p:q@h", "redis://u:***@h"),
        ("redis://u@h/0", "redis://u@h/0"),
        ("redis://h:notaport/0", "redis://h:notaport/0"),
        ("postgresql://user:pw@[::1", "postgresql://user:***@[::1"),
        ("unix:///tmp/r.sock?password=pw&db=1", "unix:///tmp/r.sock?password=***&db=1"),
        (
            "rediss://h/0?ssl_keyfile=/k.pem&ssl_password=pw&ssl_cert_reqs=required",
            "rediss://h/0?ssl_keyfile=/k.pem&ssl_password=***&ssl_cert_reqs=required",
        ),
        (
            "postgresql://u@h/db?sslpassword=pw&sslmode=verify-full",
            "postgresql://u@h/db?sslpassword=***&sslmode=verify-full",
        ),
        ("host=h password=pw dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = 'p w\\' x' dbname=d", "host=h password=*** dbname=d"),
    ],
)
def test_redact_url_hides_every_password_form(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_scan_finds_a_secret_and_its_parts() -> None:
    """The scanner itself: whole, head and tail are found; other text is not."""
    assert leaks(f"key={API_KEY}") == [API_KEY]
    assert leaks(f"...{API_KEY[-10:]}") == [API_KEY]
    assert leaks(f"{PG_PASSWORD[:10]}...") == [PG_PASSWORD]
    assert leaks("password=*** api_key='***'") == []
