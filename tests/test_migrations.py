"""Schema migrations against the machine's PostgreSQL: applied once however often and
from however many hosts they run, and a schema the code does not know is refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from fleettrace_worker.errors import DatabaseUnavailable, SchemaVersionError
from fleettrace_worker.store import database, migrations
from tests.worker_helpers import migrate_from_processes


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    with database.create_pool(database_url, min_size=1, max_size=2) as made:
        yield made


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def _versions(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT version, name FROM {migrations.VERSION_TABLE} ORDER BY version"
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


def _shipped_versions() -> list[int]:
    return [m.version for m in migrations.available()]


def test_shipped_migrations_are_numbered_from_one_in_order() -> None:
    shipped = migrations.available()
    versions = _shipped_versions()
    assert versions == sorted(set(versions)) and versions[0] == 1
    assert shipped[0].name == "initial"
    assert migrations.latest_version() == shipped[-1].version


def test_migrate_creates_the_tables_and_records_the_version(
    pool: ConnectionPool, database_url: str
) -> None:
    result = migrations.migrate(pool)

    latest = migrations.latest_version()
    assert result.from_version == 0
    assert result.to_version == latest
    assert result.applied[0] == "0001_initial"
    assert len(result.applied) == len(_shipped_versions())
    assert {"llm_traces", "metric_samples", migrations.VERSION_TABLE} <= _tables(database_url)
    assert [v for v, _ in _versions(database_url)] == _shipped_versions()
    assert migrations.check_schema(pool) == latest


def test_migrate_twice_applies_nothing_the_second_time(
    pool: ConnectionPool, database_url: str
) -> None:
    migrations.migrate(pool)
    again = migrations.migrate(pool)

    assert again.from_version == again.to_version == migrations.latest_version()
    assert again.applied == ()
    assert [v for v, _ in _versions(database_url)] == _shipped_versions()


def test_migrate_accepts_a_plain_connection(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        result = migrations.migrate(conn)
        assert migrations.check_schema(conn) == result.to_version


def test_concurrent_migrations_from_threads_apply_each_file_once(database_url: str) -> None:
    results: list[migrations.MigrationResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        try:
            with psycopg.connect(database_url) as conn:
                start.wait(timeout=10)
                results.append(migrations.migrate(conn))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    applied = [r for r in results if r.applied]
    assert len(applied) == 1
    assert all(r.to_version == migrations.latest_version() for r in results)
    assert [v for v, _ in _versions(database_url)] == _shipped_versions()


@pytest.mark.slow
def test_concurrent_migrations_from_processes_apply_each_file_once(database_url: str) -> None:
    counts = sorted(len(applied) for applied in migrate_from_processes(database_url))
    assert counts == [0, len(_shipped_versions())]
    assert [v for v, _ in _versions(database_url)] == _shipped_versions()


def test_check_schema_refuses_an_unmigrated_database(pool: ConnectionPool) -> None:
    with pytest.raises(SchemaVersionError, match=r"no fleettrace schema.*fleettrace migrate"):
        migrations.check_schema(pool)


def test_check_schema_refuses_an_empty_version_table(
    pool: ConnectionPool, database_url: str
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(f"CREATE TABLE {migrations.VERSION_TABLE} (version integer, name text)")
    with pytest.raises(SchemaVersionError, match="no fleettrace schema"):
        migrations.check_schema(pool)


def test_a_newer_schema_is_refused_naming_its_version(
    pool: ConnectionPool, database_url: str
) -> None:
    migrations.migrate(pool)
    future = migrations.latest_version() + 7
    with psycopg.connect(database_url) as conn:
        conn.execute(
            f"INSERT INTO {migrations.VERSION_TABLE} (version, name) VALUES (%s, 'future')",
            (future,),
        )

    with pytest.raises(SchemaVersionError, match=f"version {future}, newer than this code"):
        migrations.check_schema(pool)
    with pytest.raises(SchemaVersionError, match=f"version {future}, newer than this code"):
        migrations.migrate(pool)
    assert _versions(database_url)[-1] == (future, "future")


def test_an_older_schema_asks_for_migrate(
    pool: ConnectionPool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.migrate(pool)
    shipped = migrations.available()
    later = migrations.Migration(shipped[-1].version + 1, "later", "CREATE TABLE later (x int)")
    monkeypatch.setattr(migrations, "available", lambda: (*shipped, later))

    with pytest.raises(
        SchemaVersionError, match=f"version {later.version - 1}, this code needs version "
    ):
        migrations.check_schema(pool)
    result = migrations.migrate(pool)
    assert result.applied == (f"{later.version:04d}_later",)
    assert "later" in _tables(database_url)
    assert migrations.check_schema(pool) == later.version


def test_a_failing_migration_leaves_the_version_unchanged(
    pool: ConnectionPool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrations.available()
    broken = migrations.Migration(shipped[-1].version + 1, "broken", "CREATE TABLE (")
    monkeypatch.setattr(migrations, "available", lambda: (*shipped, broken))

    with pytest.raises(psycopg.errors.SyntaxError):
        migrations.migrate(pool)
    # All-or-nothing: not even the shipped versions were recorded.
    assert migrations.VERSION_TABLE not in _tables(database_url)


def _files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str]) -> None:
    """Ship exactly these migration files (each makes a table named after its file)."""
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name in names:
        (folder / name).write_text(f"CREATE TABLE t_{name.removesuffix('.sql')} (x int);")
    (folder / "README.md").write_text("not a migration")
    monkeypatch.setattr(migrations.resources, "files", lambda _package: tmp_path)
    migrations.available.cache_clear()


@pytest.fixture
def restore_shipped() -> Iterator[None]:
    yield
    migrations.available.cache_clear()


@pytest.mark.usefixtures("restore_shipped")
def test_a_gap_in_the_numbers_is_applied_around_then_filled_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: ConnectionPool, database_url: str
) -> None:
    # Numbers taken ahead of time by changes made side by side: 4 and 5 arrive later.
    _files(tmp_path, monkeypatch, ["0001_first.sql", "0003_third.sql", "0006_sixth.sql"])
    assert [m.version for m in migrations.available()] == [1, 3, 6]
    first = migrations.migrate(pool)
    assert first.applied == ("0001_first", "0003_third", "0006_sixth")
    assert migrations.check_schema(pool) == 6

    _files(
        tmp_path,
        monkeypatch,
        ["0001_first.sql", "0003_third.sql", "0004_fourth.sql", "0005_fifth.sql", "0006_sixth.sql"],
    )
    with pytest.raises(
        SchemaVersionError, match="lacks 0004_fourth, 0005_fifth; run `fleettrace migrate`"
    ):
        migrations.check_schema(pool)
    filled = migrations.migrate(pool)
    assert filled.applied == ("0004_fourth", "0005_fifth")
    assert (filled.from_version, filled.to_version) == (6, 6)
    assert migrations.migrate(pool).applied == ()
    assert migrations.check_schema(pool) == 6
    assert {"t_0004_fourth", "t_0005_fifth", "t_0006_sixth"} <= _tables(database_url)
    assert [v for v, _ in _versions(database_url)] == [1, 3, 4, 5, 6]


@pytest.mark.usefixtures("restore_shipped")
def test_a_recorded_version_this_code_does_not_ship_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: ConnectionPool
) -> None:
    _files(tmp_path, monkeypatch, ["0001_first.sql", "0002_second.sql", "0006_sixth.sql"])
    migrations.migrate(pool)
    # A build without 0002 (but with 6) meets the database the build above migrated.
    _files(tmp_path, monkeypatch, ["0001_first.sql", "0006_sixth.sql"])
    for action in (migrations.check_schema, migrations.migrate):
        with pytest.raises(SchemaVersionError, match="version 2, which this code does not know"):
            action(pool)


@pytest.mark.usefixtures("restore_shipped")
@pytest.mark.parametrize(
    "names",
    [["0001_first.sql", "0001_again.sql"], ["0000_zero.sql", "0001_first.sql"], []],
)
def test_repeated_or_missing_numbers_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str]
) -> None:
    _files(tmp_path, monkeypatch, names)
    with pytest.raises(RuntimeError, match="distinct numbers from 1"):
        migrations.available()
    monkeypatch.undo()
    migrations.available.cache_clear()
    assert migrations.available()[0].name == "initial"


def test_a_gap_is_filled_when_its_version_arrives(
    pool: ConnectionPool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions developed apart (the plan tree's 5 before the attributes' 4): a
    database migrated without the missing number gets it when it ships, and is not up
    to date until then."""
    shipped = migrations.available()
    base = [m for m in shipped if m.version <= 3]
    gap_filler = migrations.Migration(4, "filler", "CREATE TABLE filler (x int)")
    after_gap = migrations.Migration(5, "after_gap", "CREATE TABLE after_gap (x int)")
    monkeypatch.setattr(migrations, "available", lambda: (*base, after_gap))
    first = migrations.migrate(pool)
    assert first.applied[-1] == "0005_after_gap"
    assert migrations.check_schema(pool) == 5

    monkeypatch.setattr(migrations, "available", lambda: (*base, gap_filler, after_gap))
    with pytest.raises(SchemaVersionError, match="lacks 0004_filler"):
        migrations.check_schema(pool)
    again = migrations.migrate(pool)
    assert again.applied == ("0004_filler",)
    assert {"filler", "after_gap"} <= _tables(database_url)
    assert migrations.check_schema(pool) == 5
    assert migrations.migrate(pool).applied == ()
    assert [v for v, _ in _versions(database_url)] == [1, 2, 3, 4, 5]


def test_a_connection_lost_while_checking_is_unavailable(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        pid = conn.info.backend_pid
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DatabaseUnavailable, match="is unavailable"):
            migrations.check_schema(conn)


def test_the_producer_columns_arrive_on_a_database_holding_rows_of_version_1(
    pool: ConnectionPool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrations.available()
    producer = next(m for m in shipped if m.name == "producer")
    monkeypatch.setattr(migrations, "available", lambda: shipped[: producer.version - 1])
    migrations.migrate(pool)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO llm_traces (trace_id, provider, model, prompt_tokens, "
            "completion_tokens, latency_ms, tool_calls, streaming, retry_count, started_at) "
            "VALUES (gen_random_uuid(), 'openai', 'gpt-4o', 1, 2, 3, '{}', false, 0, now())"
        )
        conn.execute(
            "INSERT INTO metric_samples (batch_id, position, key, labels, value, observed_at) "
            "VALUES (gen_random_uuid(), 0, 'k', '{}', 1, now())"
        )
    monkeypatch.setattr(migrations, "available", lambda: shipped)

    # Twice, and from two threads at once: each applies the file once, rows stay.
    threads = [threading.Thread(target=migrations.migrate, args=(pool,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert migrations.migrate(pool).applied == ()
    # The file itself is harmless when run again.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(producer.sql.encode())
        for table in ("llm_traces", "metric_samples"):
            rows = conn.execute(f"SELECT producer, namespace FROM {table}").fetchall()
            assert rows == [(None, None)]
    assert [v for v, _ in _versions(database_url)].count(producer.version) == 1
    assert migrations.check_schema(pool) == migrations.latest_version()
