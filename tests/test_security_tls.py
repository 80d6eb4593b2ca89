"""TLS options of the Redis and PostgreSQL URLs reach redis-py and libpq."""

from __future__ import annotations

import ssl
from pathlib import Path

import psycopg
import pytest
import redis

from fleettrace.connection import connect_redis
from fleettrace.errors import ConfigurationError
from fleettrace_worker.errors import DatabaseUnavailable
from fleettrace_worker.store.database import connect, create_pool
from tests.worker_helpers import PG_ADMIN

# -- TLS options pass through ------------------------------------------------------------


def test_rediss_url_options_reach_redis_py(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a real certificate\n")
    url = (
        "rediss://agent:pw@127.0.0.1:6379/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={ca}&ssl_check_hostname=true"
    )
    # Checked first: a CA file that holds no certificate is named in one line.
    with pytest.raises(ConfigurationError, match=f"{ca} \\(ssl_ca_certs of the Redis URL\\)"):
        connect_redis(url)
    client = connect_redis(url, check_files=False)  # as the emitter makes it
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
