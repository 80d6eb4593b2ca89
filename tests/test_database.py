"""Connection failures become fleettrace errors that say what to do: retry (the server
is away) or fix the settings (wrong URL, login refused). Real servers only."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from fleettrace.errors import ConfigurationError
from fleettrace_worker.errors import DatabaseUnavailable
from fleettrace_worker.store import database
from tests.conftest import PG_ADMIN_URL
from tests.servers import free_port


def test_a_pooled_connection_runs_queries(database_url: str) -> None:
    with database.create_pool(database_url) as pool, database.connection(pool) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/0", "must start with postgresql:// or postgres://, got redis://"),
        ("postgresql://user:hunter2@[::1", "database URL is not valid"),
        ("postgresql://user:hunter2@127.0.0.1/db?bogus=1", 'invalid URI query parameter: "bogus"'),
        ("no equals sign here", "database URL is not valid"),
    ],
)
def test_a_bad_url_is_a_configuration_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        database.create_pool(url)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError, match=message):
        database.connect(url)


def test_key_value_settings_are_accepted(database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    admin = urlsplit(PG_ADMIN_URL)  # the run's PostgreSQL
    with database.connect(
        f"host={admin.hostname} port={admin.port or 5432} user=postgres dbname={name}"
    ) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)


def test_describe_target_never_shows_the_password() -> None:
    described = database.describe_target("postgresql://app:s3cret@db.example:6543/traces")
    assert described == "app@db.example:6543/traces"
    assert database.describe_target("dbname=x") == "localhost/x"


def test_a_server_that_is_not_there_is_unavailable() -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(
        DatabaseUnavailable, match=r"is unavailable: .*Connection refused"
    ) as caught:
        database.connect(url)
    assert "hunter2" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_pool_that_cannot_connect_reports_why() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    # A down server does not stop the pool from being made; using it says why.
    with (
        database.create_pool(url, timeout_s=0.5) as pool,
        pytest.raises(DatabaseUnavailable, match="Connection refused"),
        database.connection(pool),
    ):
        pass  # pragma: no cover - never entered


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://nobody@127.0.0.1:5432/postgres", 'role "nobody" does not exist'),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_x", 'database "no_such_db_x" does not'),
        ("postgresql://postgres@127.0.0.1:5432/postgres?sslmode=require", "SSL was required"),
        ("postgresql://postgres@127.0.0.1:5432/postgres?sslmode=bogus", "invalid sslmode value"),
    ],
)
def test_a_refused_login_is_a_configuration_error(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"refused the connection: .*{message}"):
        database.connect(url)


def test_a_pool_whose_login_is_refused_says_so() -> None:
    url = "postgresql://nobody@127.0.0.1:5432/postgres"
    with (
        database.create_pool(url, timeout_s=0.5) as pool,
        pytest.raises(ConfigurationError, match='role "nobody" does not exist'),
        database.connection(pool),
    ):
        pass  # pragma: no cover - never entered


def test_a_database_refusing_connections_is_unavailable(database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            with pytest.raises(DatabaseUnavailable, match="not currently accepting connections"):
                database.connect(database_url)
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_a_connection_lost_mid_statement_is_unavailable(database_url: str) -> None:
    with database.create_pool(database_url) as pool:
        with (
            pytest.raises(DatabaseUnavailable, match="unavailable"),
            database.connection(pool) as conn,
        ):
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        # The pool replaces the dead connection: the next block works.
        with database.connection(pool) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_exhausted_pool_says_the_server_is_up_but_busy(database_url: str) -> None:
    with (
        database.create_pool(database_url, min_size=1, max_size=1, timeout_s=0.3) as pool,
        database.connection(pool),
        pytest.raises(DatabaseUnavailable, match="accepts connections, but none was"),
        database.connection(pool),
    ):
        pass  # pragma: no cover - never entered


def test_a_checked_pool_fails_at_once_when_the_server_is_away() -> None:
    with pytest.raises(DatabaseUnavailable, match="Connection refused"):
        database.create_checked_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")


def test_a_connect_timeout_in_the_url_is_kept(database_url: str) -> None:
    url = f"{database_url}?connect_timeout=3&application_name=fleettrace-test"
    with database.connect(url) as conn:
        assert conn.info.get_parameters()["connect_timeout"] == "3"
    with database.create_pool(url) as pool, database.connection(pool) as conn:
        assert conn.info.get_parameters()["connect_timeout"] == "3"
        row = conn.execute("SHOW application_name").fetchone()
        assert row == ("fleettrace-test",)


def test_a_deadlock_is_a_transient_error(database_url: str) -> None:
    # Two transactions locking two rows in opposite orders: PostgreSQL rolls one back,
    # and retrying it is the right answer, so it must arrive as DatabaseUnavailable.
    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE pair (id int PRIMARY KEY)")
        setup.execute("INSERT INTO pair VALUES (1), (2)")
        setup.execute(
            f"ALTER DATABASE \"{database_url.rsplit('/', 1)[1]}\" SET deadlock_timeout = '100ms'"
        )
    failures: list[BaseException] = []
    first_locked = threading.Barrier(2, timeout=10)

    def lock(pool: ConnectionPool, first: int, second: int) -> None:
        try:
            with database.connection(pool) as conn, conn.transaction():
                conn.execute("SELECT id FROM pair WHERE id = %s FOR UPDATE", (first,))
                first_locked.wait()
                conn.execute("SELECT id FROM pair WHERE id = %s FOR UPDATE", (second,))
        except DatabaseUnavailable as error:
            failures.append(error)

    with database.create_pool(database_url, min_size=2, max_size=2) as pool:
        threads = [
            threading.Thread(target=lock, args=(pool, 1, 2)),
            threading.Thread(target=lock, args=(pool, 2, 1)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(failures) == 1
    assert "rolled the transaction back: deadlock detected" in str(failures[0])


def test_a_key_value_string_holding_a_scheme_like_password_is_not_shown() -> None:
    with pytest.raises(ConfigurationError) as caught:
        database.create_pool("host=127.0.0.1 password=hunter2://x bogus")
    assert "hunter2" not in str(caught.value)


# -- what each PostgreSQL error means for a batch (database.SQLSTATE_VERDICTS) ---------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("22003", database.Verdict.REFUSED),  # a number out of range
        ("22P05", database.Verdict.REFUSED),  # untranslatable character
        ("23514", database.Verdict.REFUSED),  # CHECK
        ("23502", database.Verdict.REFUSED),  # NOT NULL
        ("54000", database.Verdict.REFUSED),  # an index row too large
        ("08006", database.Verdict.RETRY),  # connection failure
        ("25006", database.Verdict.RETRY),  # read-only transaction: a failover
        ("40001", database.Verdict.RETRY),  # serialization failure
        ("40P01", database.Verdict.RETRY),  # deadlock
        ("53300", database.Verdict.RETRY),  # too many connections
        ("53100", database.Verdict.RETRY),  # disk full
        ("55P03", database.Verdict.RETRY),  # lock_timeout
        ("57014", database.Verdict.RETRY),  # statement_timeout
        ("57P01", database.Verdict.RETRY),  # admin shutdown
        ("57P02", database.Verdict.RETRY),  # crash shutdown
        ("57P03", database.Verdict.RETRY),  # cannot connect now
        ("58030", database.Verdict.RETRY),  # I/O error
        ("42P01", database.Verdict.RETRY),  # a missing table is not the record's fault
        ("XX000", database.Verdict.RETRY),  # internal error: not the record's fault either
        ("28P01", database.Verdict.CONFIGURATION),  # password authentication failed
        ("3D000", database.Verdict.CONFIGURATION),  # no such database
    ],
)
def test_a_sqlstate_decides_whether_the_rows_are_at_fault(
    state: str, expected: database.Verdict
) -> None:
    error_class = psycopg.errors.lookup(state)
    assert database.verdict(error_class("x")) is expected  # type: ignore[call-arg]


def test_without_a_sqlstate_only_psycopg_refusing_a_value_blames_the_rows() -> None:
    assert database.verdict(psycopg.InterfaceError("the connection is lost")) is (
        database.Verdict.RETRY
    )
    assert database.verdict(psycopg.OperationalError("consuming input failed")) is (
        database.Verdict.RETRY
    )
    assert database.verdict(psycopg.InternalError("?")) is database.Verdict.RETRY
    assert database.verdict(psycopg.DataError("NUL byte")) is database.Verdict.REFUSED
    assert database.verdict(psycopg.IntegrityError("?")) is database.Verdict.REFUSED


def _table(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL CHECK (v >= 0))")


def test_rows_the_server_refuses_are_store_refused_with_their_sqlstate(database_url: str) -> None:
    _table(database_url)
    with database.create_pool(database_url) as pool:
        with (
            pytest.raises(database.StoreRefused, match=r"t_v_check.*\(SQLSTATE 23514\)"),
            database.connection(pool) as conn,
            conn.cursor().copy("COPY t FROM STDIN") as cp,
        ):
            cp.write_row((1, -1))
        with (
            pytest.raises(database.StoreRefused, match=r"out of range.*\(SQLSTATE 22003\)"),
            database.connection(pool) as conn,
        ):
            conn.execute("INSERT INTO t VALUES (2, 2147483647 + 1)")
        with database.connection(pool) as conn:  # the connection is fine afterwards
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_read_only_database_after_a_failover_is_unavailable_not_refused(
    database_url: str,
) -> None:
    _table(database_url)
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    with (
        database.create_pool(database_url) as pool,
        pytest.raises(DatabaseUnavailable, match=r"read-only transaction \(SQLSTATE 25006\)"),
        database.connection(pool) as conn,
        conn.cursor().copy("COPY t FROM STDIN") as cp,
    ):
        cp.write_row((1, 1))


def test_timeouts_are_set_on_every_pooled_connection_and_are_unavailable(
    database_url: str,
) -> None:
    _table(database_url)
    holder = psycopg.connect(database_url)
    try:
        holder.execute("INSERT INTO t VALUES (7, 7)")  # uncommitted: holds the key
        with database.create_pool(
            database_url, min_size=1, max_size=1, statement_timeout_ms=400, lock_timeout_ms=200
        ) as pool:
            with database.connection(pool) as conn:
                assert conn.execute("SHOW statement_timeout").fetchone() == ("400ms",)
                assert conn.execute("SHOW lock_timeout").fetchone() == ("200ms",)
            with (
                pytest.raises(DatabaseUnavailable, match=r"lock timeout \(SQLSTATE 55P03\)"),
                database.connection(pool) as conn,
            ):
                conn.execute("INSERT INTO t VALUES (7, 8)")
            with (
                pytest.raises(DatabaseUnavailable, match=r"statement timeout \(SQLSTATE 57014\)"),
                database.connection(pool) as conn,
            ):
                conn.execute("SELECT pg_sleep(5)")
    finally:
        holder.close()


def test_a_connection_lost_mid_copy_is_unavailable(database_url: str) -> None:
    _table(database_url)
    with (
        psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin,
        database.create_pool(database_url, min_size=1, max_size=1) as pool,
    ):
        with (
            pytest.raises(DatabaseUnavailable, match="unavailable"),
            database.connection(pool) as conn,
            conn.cursor().copy("COPY t FROM STDIN") as cp,
        ):
            cp.write_row((0, 0))
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            for i in range(1, 500_000):  # until libpq notices the connection is gone
                cp.write_row((i, 0))
        with database.connection(pool) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
