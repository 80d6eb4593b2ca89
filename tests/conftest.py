"""Fixtures shared by the whole suite: a fresh namespace on the machine's Redis and a
fresh database on the machine's PostgreSQL for every test that asks for one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from fleettrace.batch_script import load_library
from fleettrace.keys import Keys
from tests.servers import PrivatePostgres, PrivateRedis

REDIS_URL = os.environ.get("FLEETTRACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "FLEETTRACE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session", autouse=True)
def _batch_library() -> None:
    """The batch function library on the machine's Redis, as ``fleettrace migrate`` or
    a worker would load it, so emitters of tests that run neither can write. Loading
    it is idempotent (REPLACE of the same versioned library)."""
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
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{ns.prefix}*", count=1000):
        client.delete(key)
    client.close()


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
