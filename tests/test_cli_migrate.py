"""``fleettrace migrate`` run for real against the machine's PostgreSQL: what it
prints, what it changes, and its exit codes."""

from __future__ import annotations

import psycopg
import pytest

from fleettrace_worker.store import migrations
from tests.servers import free_port
from tests.worker_helpers import _one_clean_line, run

# migrate ---------------------------------------------------------------------------


def test_migrate_then_migrate_again(capsys: pytest.CaptureFixture[str], database_url: str) -> None:
    latest = migrations.latest_version()
    code, out, _ = run(capsys, "migrate", "--database-url", database_url)
    assert code == 0
    assert out.splitlines() == [
        f"migrated schema from version 0 to {latest} (applied "
        + ", ".join(f"{m.version:04d}_{m.name}" for m in migrations.available())
        + ")",
        "loaded the batch function library into Redis",
    ]

    code, out, _ = run(capsys, "migrate", "--no-redis", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"schema already at version {latest}; nothing to apply")

    code, out, _ = run(capsys, "migrate", "--check", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"schema is current at version {latest}")


def test_migrate_says_in_one_line_when_redis_cannot_take_the_library(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    away = f"redis://127.0.0.1:{free_port()}/0"
    code, out, err = run(capsys, "migrate", "--database-url", database_url, "--redis-url", away)
    assert code == 0 and out.startswith("migrated schema from version 0")
    assert err.strip().splitlines() == [
        f"could not load the batch function library into Redis at {away}: ConnectionError; "
        "every worker loads it at start"
    ]


def test_migrate_reads_the_url_from_the_environment(
    capsys: pytest.CaptureFixture[str], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETTRACE_DATABASE_URL", database_url)
    code, out, _ = run(capsys, "migrate")
    assert code == 0 and out.startswith("migrated schema from version 0")
    with psycopg.connect(database_url) as conn:
        assert migrations.current_version(conn) == migrations.latest_version()


def test_migrate_check_on_an_empty_database_fails(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    code, out, err = run(capsys, "migrate", "--check", "--database-url", database_url)
    assert code == 1 and out == ""
    assert "no fleettrace schema" in _one_clean_line(err)
    assert _one_clean_line(err).startswith("fleettrace migrate: ")


def test_migrate_refuses_a_newer_schema_naming_it(
    capsys: pytest.CaptureFixture[str], migrated: str
) -> None:
    with psycopg.connect(migrated) as conn:
        conn.execute(f"INSERT INTO {migrations.VERSION_TABLE} VALUES (99, 'future', now())")
    code, _, err = run(capsys, "migrate", "--database-url", migrated)
    assert code == 1
    assert "version 99, newer than this code" in _one_clean_line(err)
