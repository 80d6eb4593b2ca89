"""TLS for real: the emitter, the worker and the CLI against a private ``redis-server``
that speaks TLS only and a private PostgreSQL that accepts ``hostssl`` connections
only, with certificates made by the test (tests/tls.py). Each refusal (a wrong CA, a
missing client certificate, a connection without TLS) is one line, never a
traceback, and never an exception in agent code.

The server flags and client URLs here are the recipes of docs/security.md.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from tests.factories import numbered_trace
from tests.servers import PrivatePostgres, free_port
from tests.tls import (
    Certificates,
    TlsRedis,
    install_pg_certificates,
    make_certificates,
    pg_tls_url,
)
from tests.waiting import wait_until
from tests.worker_helpers import (
    fleettrace,
    fleettrace_together,
    http_get,
    start_worker,
    worker_env,
)

pytestmark = pytest.mark.timeout(300)

#: Only TLS connections from the loopback address, with a password, or (role
#: ``fleettrace``) a client certificate whose common name is the role name.
PG_HBA = (
    "local all all trust",
    "hostssl all fleettrace 127.0.0.1/32 cert",
    "hostssl all all 127.0.0.1/32 scram-sha-256",
)
PG_PASSWORD = "tls-test-password"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_redis(certs: Certificates) -> Iterator[TlsRedis]:
    server = TlsRedis(certs)
    server.start()
    yield server
    server.close()


@pytest.fixture
def mtls_redis(certs: Certificates) -> Iterator[TlsRedis]:
    """A TLS Redis that demands a client certificate (``--tls-auth-clients yes``)."""
    server = TlsRedis(certs, auth_clients=True)
    server.start()
    yield server
    server.close()


@pytest.fixture
def tls_postgres(certs: Certificates) -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.options.update(install_pg_certificates(server, certs))
    server.write_hba(PG_HBA)
    server.start()
    with _local_admin(server) as admin:
        admin.execute(f"ALTER ROLE postgres PASSWORD '{PG_PASSWORD}'")
    yield server
    server.close()


def _local_admin(server: PrivatePostgres) -> psycopg.Connection:
    """The superuser over the server's Unix socket (``local ... trust``)."""
    return psycopg.connect(
        f"postgresql://postgres@/postgres?host={server.dir}&port={server.port}", autocommit=True
    )


def _one_line_refusal(
    result: subprocess.CompletedProcess[str], *expected: str, code: int = 2
) -> str:
    """The command failed with exit ``code`` and one line on stderr, no traceback,
    naming ``expected``."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _record(url: str, keys: Keys, traces: list[LLMTrace]) -> Emitter:
    emitter = Emitter(
        EmitterSettings(
            redis_url=url, namespace=keys.namespace, retry_initial_s=0.01, retry_max_s=0.05
        )
    )
    for trace in traces:
        emitter.record(trace)
    return emitter


def _entries(server: TlsRedis, keys: Keys) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.xlen(keys.traces))
    finally:
        client.close()


@pytest.mark.slow
def test_emitter_worker_and_cli_over_tls_redis_and_tls_postgres(
    tls_redis: TlsRedis, tls_postgres: PrivatePostgres, certs: Certificates
) -> None:
    keys = Keys("tls")
    redis_url = tls_redis.url
    db_url = pg_tls_url(tls_postgres, certs.ca.cert, password=PG_PASSWORD)
    assert redis_url.startswith("rediss://") and "ssl_cert_reqs=required" in redis_url
    assert "sslmode=verify-full" in db_url
    traces = [numbered_trace(i, plan_id="tls-plan") for i in range(50)]
    with _record(redis_url, keys, traces) as emitter:
        assert emitter.flush(10)
        assert emitter.stats.send_failures == 0
        assert emitter.stats.sent == 50
    env = worker_env(redis_url, db_url, keys)

    assert fleettrace("migrate", env=env).returncode == 0
    worker = fleettrace("worker", "--burst", "--consumer", "w-tls", env=env)
    assert worker.returncode == 0, worker.stderr
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
        count = conn.execute("SELECT count(*) FROM llm_traces WHERE plan_id = 'tls-plan'")
        assert count.fetchone() == (50,)

    # Neither server speaks anything but TLS: the same calls without it are refused.
    plain_redis = f"redis://127.0.0.1:{tls_redis.port}/0"
    plain_db = (
        f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{tls_postgres.port}/postgres"
        "?sslmode=disable"
    )
    metrics, listing, dead, plain_metrics, plain_traces = fleettrace_together(
        (("metrics", "--json"), env),
        (("traces", "list", "--json", "--limit", "100"), env),
        (("dlq", "list", "--json"), env),
        (("metrics",), worker_env(plain_redis, db_url, keys)),
        (("traces", "list"), worker_env(redis_url, plain_db, keys)),
    )
    assert metrics.returncode == 0, metrics.stderr
    usage = [m for m in json.loads(metrics.stdout)["items"] if m["key"] == "actor.token_usage"]
    assert usage, metrics.stdout
    assert listing.returncode == 0, listing.stderr
    listed = {item["trace_id"] for item in json.loads(listing.stdout)["items"]}
    assert listed == {str(t.trace_id) for t in traces}
    assert dead.returncode == 0, dead.stderr
    _one_line_refusal(plain_metrics, code=1)
    _one_line_refusal(plain_traces, "no pg_hba.conf entry")


@pytest.mark.slow
def test_a_wrong_redis_ca_is_refused_in_one_line_by_cli_worker_and_emitter(
    tls_redis: TlsRedis, certs: Certificates, database_url: str
) -> None:
    keys = Keys("tls-wrong-ca")
    wrong = tls_redis.tls_url(ca=certs.wrong_ca.cert)
    env = worker_env(wrong, database_url, keys)

    # The name is checked too: the certificate is for 127.0.0.1, not localhost.
    by_name = tls_redis.tls_url().replace("127.0.0.1", "localhost")
    # A running worker (not --burst) says it once and stops, like a refused login.
    *wrong_ca, wrong_name, running = fleettrace_together(
        (("metrics",), env),
        (("dlq", "list"), env),
        (("worker", "--burst"), env),
        (("metrics",), worker_env(by_name, database_url, keys)),
        (("worker", "--consumer", "w-wrong-ca"), env),
        timeout_s=60,
    )
    for result in wrong_ca:
        _one_line_refusal(result, "CERTIFICATE_VERIFY_FAILED")
    _one_line_refusal(wrong_name, "Hostname mismatch")
    _one_line_refusal(running)

    # The emitter: no exception into agent code, every attempt counted.
    emitter = _record(wrong, keys, [numbered_trace(i) for i in range(5)])
    assert emitter.flush(0.5) is False
    stats = emitter.stats
    assert stats.send_failures >= 1
    assert stats.last_error is not None and "CERTIFICATE_VERIFY_FAILED" in stats.last_error
    assert emitter.close(0.5) is False
    assert emitter.stats.dropped == 5
    assert _entries(tls_redis, keys) == 0


@pytest.mark.slow
def test_a_server_that_demands_a_client_certificate(
    mtls_redis: TlsRedis, certs: Certificates, database_url: str
) -> None:
    keys = Keys("tls-client-cert")
    without = mtls_redis.tls_url()
    with_cert = mtls_redis.tls_url(client=certs.client)

    emitter = _record(without, keys, [numbered_trace(i) for i in range(5)])
    assert emitter.flush(0.5) is False
    assert emitter.stats.send_failures >= 1
    assert emitter.close(0.5) is False
    assert _entries(mtls_redis, keys) == 0
    # TLS 1.3: the server's alert may arrive (a configuration error, exit 2) or the
    # connection may just end first (exit 1, as Redis away); both name the cause.
    traces = [numbered_trace(i, plan_id="mtls") for i in range(20)]
    with _record(with_cert, keys, traces) as emitter:
        assert emitter.flush(10)
        assert emitter.stats.send_failures == 0
    env = worker_env(with_cert, database_url, keys)
    refused, migrated = fleettrace_together(
        (("metrics",), worker_env(without, database_url, keys)), (("migrate",), env)
    )
    _one_line_refusal(refused, "client certificate", code=2 if refused.returncode == 2 else 1)
    assert migrated.returncode == 0, migrated.stderr
    worker = fleettrace("worker", "--burst", env=env)
    assert worker.returncode == 0, worker.stderr
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM llm_traces WHERE plan_id = 'mtls'")
        assert stored.fetchone() == (20,)
    metrics = fleettrace("metrics", "--json", env=env)
    assert metrics.returncode == 0, metrics.stderr


@pytest.mark.slow
def test_a_worker_without_the_client_certificate_says_why(
    mtls_redis: TlsRedis, database_url: str
) -> None:
    """Against a Redis that demands a client certificate, a worker without one either
    stops with one line, or stays up not ready and logs why: never silent."""
    env = worker_env(mtls_redis.tls_url(), database_url, Keys("tls-no-client-cert"))
    port = free_port()
    worker = start_worker("--consumer", "w-no-cert", "--http", f"127.0.0.1:{port}", env=env)
    try:
        readyz = f"http://127.0.0.1:{port}/readyz"
        wait_until(
            lambda: worker.poll() is not None or http_get(readyz)[0] == 503,
            60,
            "the worker to stop or to answer not ready",
        )
        if worker.poll() is None:
            worker.terminate()
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert "Traceback" not in err
    said = [line for line in err.splitlines() if "client certificate" in line]
    assert said, err
    assert "ssl_certfile and ssl_keyfile" in said[0]


@pytest.mark.slow
def test_a_missing_or_unusable_ca_file_is_named_in_one_line(
    tls_redis: TlsRedis, database_url: str, tmp_path: Path
) -> None:
    """redis-py says "Error 2 connecting to ... No such file or directory" without
    the file; fleettrace names it: the CLI and the worker stop with one line, the
    emitter counts it as each send's failure and raises nothing into agent code."""
    keys = Keys("tls-ca-file")
    junk = tmp_path / "junk-ca.crt"
    junk.write_text("not a certificate\n")
    cases = ((tmp_path / "missing-ca.crt", "No such file"), (junk, "no CA certificate"))
    commands = (("metrics",), ("worker", "--burst"), ("migrate",))
    results = iter(
        fleettrace_together(
            *(
                (args, worker_env(tls_redis.tls_url(ca=ca), database_url, keys))
                for ca, _ in cases
                for args in commands
            )
        )
    )
    for ca, why in cases:
        url = tls_redis.tls_url(ca=ca)
        for _ in commands:
            line = _one_line_refusal(next(results), str(ca), why)
            assert "ssl_ca_certs" in line
        emitter = _record(url, keys, [numbered_trace(i) for i in range(3)])
        assert emitter.flush(0.5) is False
        assert emitter.stats.send_failures >= 1
        assert str(ca) in (emitter.stats.last_error or "")
        assert why in (emitter.stats.last_error or "")
        assert emitter.close(0.5) is False
        assert emitter.stats.dropped == 3
    assert _entries(tls_redis, keys) == 0


@pytest.mark.slow
def test_a_wrong_postgres_ca_is_refused_in_one_line(
    tls_postgres: PrivatePostgres, certs: Certificates, redis_url: str, keys: Keys
) -> None:
    wrong = pg_tls_url(tls_postgres, certs.wrong_ca.cert, password=PG_PASSWORD)
    env = worker_env(redis_url, wrong, keys)
    # verify-full checks the name too: the certificate is for 127.0.0.1, not localhost.
    by_name = pg_tls_url(tls_postgres, certs.ca.cert, password=PG_PASSWORD).replace(
        "127.0.0.1", "localhost"
    )
    *wrong_ca, wrong_name = fleettrace_together(
        (("migrate",), env),
        (("traces", "list"), env),
        (("worker", "--burst"), env),
        (("migrate",), worker_env(redis_url, by_name, keys)),
    )
    for result in wrong_ca:
        _one_line_refusal(result, "certificate verify failed")
    _one_line_refusal(wrong_name, "localhost")


@pytest.mark.slow
def test_postgres_client_certificate_login(
    tls_postgres: PrivatePostgres, certs: Certificates, redis_url: str, keys: Keys
) -> None:
    with _local_admin(tls_postgres) as admin:
        admin.execute(f'CREATE ROLE "{certs.client_name}" LOGIN')
        admin.execute(f'CREATE DATABASE ft_cert OWNER "{certs.client_name}"')
    user = certs.client_name
    with_cert = pg_tls_url(
        tls_postgres, certs.ca.cert, user=user, dbname="ft_cert", client=certs.client
    )
    without = pg_tls_url(tls_postgres, certs.ca.cert, user=user, dbname="ft_cert")
    refused, migrated = fleettrace_together(
        (("migrate",), worker_env(redis_url, without, keys)),
        (("migrate",), worker_env(redis_url, with_cert, keys)),
    )
    _one_line_refusal(refused, "certificate")
    assert migrated.returncode == 0, migrated.stderr
    listing = fleettrace("traces", "list", env=worker_env(redis_url, with_cert, keys))
    assert listing.returncode == 0, listing.stderr


def test_the_certificates_chain_as_the_servers_need(certs: Certificates, tmp_path: Path) -> None:
    """The helper's certificates: the server's verifies against the test CA with the
    loopback address as its name, and not against the wrong CA."""

    def verify(ca: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(ca),
                "-verify_ip",
                "127.0.0.1",
                str(certs.server.cert),
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    assert verify(certs.ca.cert).returncode == 0
    assert verify(certs.wrong_ca.cert).returncode != 0
    assert oct(certs.server.key.stat().st_mode & 0o777) == "0o600"
