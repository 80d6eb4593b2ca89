"""The private servers really stop and start: fault tests rely on it."""

from __future__ import annotations

import psycopg
import pytest
import redis

from tests.servers import PrivatePostgres, PrivateRedis


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
