"""Least-privilege Redis users (the exact lines of docs/security.md, on the real
Redis), TLS options reaching redis-py and libpq, and the LangSmith key kept out of
logs, dead letters, reprs and --help."""

from __future__ import annotations

import logging
import re
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from fleettrace.connection import connect_redis
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.errors import ConfigurationError, DatabaseUnavailable
from fleettrace.keys import LANGSMITH_GROUP, PERSIST_GROUP, Keys
from fleettrace.live import read_live
from fleettrace.plans import count_plans, top_plans
from fleettrace_worker.cli import COMMANDS
from fleettrace_worker.consumer import Consumer
from fleettrace_worker.database import connect, create_pool
from fleettrace_worker.deadletter import list_dead_letters, replay_dead_letters
from fleettrace_worker.forwarder import ForwardLoop, loop_settings
from fleettrace_worker.langsmith_settings import LangSmithSettings
from fleettrace_worker.loop import LoopSettings
from fleettrace_worker.persist import PersistLoop
from fleettrace_worker.repository import LLMTraceRepository
from fleettrace_worker.trim import trim_streams
from tests.factories import llm_trace, trace_entry
from tests.langsmith_server import Fault, LangSmithServer
from tests.worker_helpers import ROOT, fleettrace, migrated, trace_rows, worker_env

SECURITY_DOC = ROOT / "docs" / "security.md"
API_KEY = "lsv2_sk_" + "7f3e9a1c5b2d4e6f8a0b1c2d3e4f5a6b" + "_9c8d7e6f5a"


def documented_acl_lines(doc: Path = SECURITY_DOC) -> dict[str, str]:
    """The ``ACL SETUSER`` lines of the security page, by the user name they set."""
    lines = re.findall(r"^ACL SETUSER (\S+) (.+)$", doc.read_text(), flags=re.MULTILINE)
    return {user: rules for user, rules in lines}


def create_user(admin: redis.Redis, template: str, user: str, password: str, keys: Keys) -> None:
    rules = template.replace("{fleettrace}", keys.prefix).split()
    rules = [f">{password}" if rule.startswith(">") else rule for rule in rules]
    admin.execute_command("ACL", "SETUSER", user, *rules)


@pytest.fixture
def acl_users(redis_client: redis.Redis, keys: Keys, redis_url: str) -> Iterator[dict[str, str]]:
    """URLs of an agent user and a worker user made from the documented lines, for this
    test's namespace only; deleted afterwards."""
    templates = documented_acl_lines()
    assert set(templates) == {"fleettrace-agent", "fleettrace-worker"}
    suffix = uuid.uuid4().hex[:10]
    urls = {}
    made = []
    try:
        for role in ("agent", "worker"):
            user, password = f"ft-{role}-{suffix}", uuid.uuid4().hex
            create_user(redis_client, templates[f"fleettrace-{role}"], user, password, keys)
            made.append(user)
            host_port = redis_url.split("//", 1)[1].split("/", 1)[0]  # the run's Redis
            urls[role] = f"redis://{user}:{password}@{host_port}/0"
        yield urls
    finally:
        for user in made:
            redis_client.execute_command("ACL", "DELUSER", user)


def test_the_agent_user_records_and_can_neither_read_nor_delete(
    acl_users: dict[str, str], redis_client: redis.Redis, keys: Keys
) -> None:
    records = [llm_trace(plan_id=f"plan-{i % 3}", actor="a", prompt_tokens=i) for i in range(20)]
    with Emitter(EmitterSettings(redis_url=acl_users["agent"], namespace=keys.namespace)) as em:
        for record in records:
            em.record(record)
        em.observe("tool.invocation_duration_ms", 12.0, {"tool": "search"})
        assert em.flush(10)
        assert em.stats.send_failures == 0
    assert redis_client.xlen(keys.traces) >= 1
    assert redis_client.xlen(keys.metrics) >= 1
    assert redis_client.hgetall(keys.emitter)[b"records"] == b"21"

    agent = redis.Redis.from_url(acl_users["agent"])
    other = Keys(f"other-{uuid.uuid4().hex[:8]}")
    refused = [
        ("XRANGE", keys.traces, "-", "+"),
        ("XREVRANGE", keys.traces, "+", "-"),
        ("XREAD", "STREAMS", keys.traces, "0"),
        ("XREADGROUP", "GROUP", "g", "c", "STREAMS", keys.traces, ">"),
        ("XLEN", keys.traces),
        ("HGETALL", keys.emitter),
        ("HGET", keys.emitter, "records"),
        ("GET", keys.worker_health("x")),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("DEL", keys.traces),
        ("UNLINK", keys.traces),
        ("XDEL", keys.traces, "0-1"),
        ("XTRIM", keys.traces, "MAXLEN", "0"),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        ("EVAL", "return 1", "0"),
        ("XADD", other.traces, "*", "v", "1"),
        ("HSET", other.emitter, "records", "1"),
    ]
    try:
        assert agent.ping() is True
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                agent.execute_command(*command)
        # A script the agent loads runs with the agent's rights: no reading through it.
        sha = agent.script_load("return redis.call('XRANGE', KEYS[1], '-', '+')")
        with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
            agent.evalsha(sha, 1, keys.traces)
    finally:
        agent.close()
    # Nothing the agent tried removed anything.
    assert redis_client.exists(keys.traces) == 1
    assert not redis_client.exists(other.traces)


def test_the_worker_user_consumes_stores_forwards_dead_letters_and_trims(
    acl_users: dict[str, str], redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    records = [llm_trace(plan_id=f"plan-{i % 3}", actor="a", prompt_tokens=i) for i in range(30)]
    with Emitter(EmitterSettings(redis_url=acl_users["agent"], namespace=keys.namespace)) as em:
        for record in records:
            em.record(record)
        assert em.flush(10)
    db = migrated(database_url)
    worker = connect_redis(acl_users["worker"])
    pool = create_pool(db, min_size=1, max_size=2)
    try:
        burst = LoopSettings(burst=True, retry_initial_s=0.01, retry_max_s=0.05)
        persist = PersistLoop(
            Consumer(worker, keys, PERSIST_GROUP, "w1"),
            LLMTraceRepository(pool),
            burst,
            pool=pool,
        )
        persist.run(threading.Event())
        assert trace_rows(db) == len(records)

        with LangSmithServer(api_key=API_KEY) as server:
            settings = LangSmithSettings(
                enabled=True, endpoint=server.url, api_key=API_KEY, backoff_initial_s=0.01
            )
            server.inject(Fault("status", status=400, count=1))
            forward = ForwardLoop(
                Consumer(worker, keys, LANGSMITH_GROUP, "w1"),
                LangSmithSettings(**{**_fields(settings), "concurrency": 1}),
                loop=loop_settings(settings, burst=True),
            )
            forward.run(threading.Event())
            assert len(list_dead_letters(worker, keys, LANGSMITH_GROUP)) >= 1
            report = replay_dead_letters(worker, keys, LANGSMITH_GROUP)
            assert report.replayed and not report.refused
            forward.run(threading.Event())
            assert {str(r.trace_id) for r in records} <= server.run_ids()
        assert list_dead_letters(worker, keys, LANGSMITH_GROUP) == []
        persist.run(threading.Event())
        assert trace_rows(db) == len(records)

        trim_streams(worker, keys)
        assert read_live(worker, keys)
        assert {p.plan_id for p in top_plans(worker, keys, 5).plans} == {
            "plan-0",
            "plan-1",
            "plan-2",
        }
        assert count_plans(worker, keys) == (3, True)
        worker.set(keys.worker_health("w1"), "{}", ex=10)
        assert worker.get(keys.worker_health("w1")) == b"{}"
        # Even the worker cannot touch another namespace or administer the server.
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.xrange(Keys(f"other-{uuid.uuid4().hex[:8]}").traces)
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.execute_command("FLUSHDB")
    finally:
        pool.close()
        worker.close()


def _fields(settings: LangSmithSettings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def test_a_wrong_password_is_one_line_without_the_password(
    acl_users: dict[str, str], keys: Keys
) -> None:
    url = re.sub(r":[0-9a-f]{32}@", ":not-the-password@", acl_users["worker"])
    result = fleettrace(
        "metrics",
        "--redis-url",
        url,
        "--namespace",
        keys.namespace,
        env=worker_env(url, "postgresql://postgres@127.0.0.1:5432/postgres", keys),
    )
    assert result.returncode != 0
    assert "not-the-password" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- TLS options pass through ------------------------------------------------------------


def test_rediss_url_options_reach_redis_py(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a real certificate\n")
    url = (
        "rediss://agent:pw@127.0.0.1:6379/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={ca}&ssl_check_hostname=true"
    )
    client = connect_redis(url)
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    kwargs = pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_ca_certs"] == str(ca)
    assert kwargs["ssl_check_hostname"] is True
    assert kwargs["username"] == "agent"
    connection = pool.connection_class(**kwargs)
    assert isinstance(connection, redis.SSLConnection)
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.ca_certs == str(ca)
    # The handshake is attempted with that CA file, which holds no certificate.
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE"):
        client.ping()
    client.close()


def test_sslmode_reaches_libpq(database_url: str) -> None:
    url = f"{database_url}?sslmode=require&sslrootcert=/nonexistent/ca.pem&application_name=ft"
    pool = create_pool(url, min_size=1, max_size=1)
    try:
        params = psycopg.conninfo.conninfo_to_dict(pool.conninfo)
        assert params["sslmode"] == "require"
        assert params["sslrootcert"] == "/nonexistent/ca.pem"
    finally:
        pool.close(timeout=1)
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        ssl_on = admin.execute("SHOW ssl").fetchone() == ("on",)
    if ssl_on:
        pytest.skip("the server speaks TLS; the refusal below needs one that does not")
    # libpq got sslmode=require: a server without TLS is refused for that reason.
    with pytest.raises((ConfigurationError, DatabaseUnavailable), match="SSL"):
        connect(f"{database_url}?sslmode=require")


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


# -- the LangSmith API key ---------------------------------------------------------------


def test_the_api_key_is_in_no_log_dead_letter_or_repr(
    redis_client: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    entry = trace_entry(
        [llm_trace(plan_id=f"plan-{i % 3}", actor="a", prompt_tokens=i) for i in range(4)]
    )
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


@pytest.mark.slow
def test_the_api_key_is_not_in_help(keys: Keys) -> None:
    env = worker_env("redis://127.0.0.1:6379/0", PG_ADMIN, keys)
    env.update(LANGSMITH_API_KEY=API_KEY, LANGSMITH_TRACING="true")
    for args in (("--help",), *((name, "--help") for name in COMMANDS)):
        result = fleettrace(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert API_KEY not in result.stdout + result.stderr
        assert API_KEY[-10:] not in result.stdout + result.stderr
