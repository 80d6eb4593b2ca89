"""Which workers run on this host, so a container probe finds its own without a name.

Consumer names must differ between worker processes (two workers sharing a name
would take each other's pending entries for their own), so the default name is the
host name plus the process id. A probe (``fleettrace worker --check``) cannot guess
that name, so each worker leaves a small file in a runtime directory of its user,
``worker-<pid>.json``, holding its consumer name and namespace, and removes it when
it exits. The probe reads the files whose process still runs (in its own pid
namespace: a ``docker exec`` probe sees the container's processes) and checks each
worker's health key. A file left by a killed worker names a process that is gone
and is ignored.

The directory is ``$FLEETTRACE_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/fleettrace``,
else ``/tmp/fleettrace-<uid>``; it is made private (0700) and a directory owned by
another user is refused, so another user cannot point the probe elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis

from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace_worker.settings import RUNTIME_DIR_VARIABLE, LocalEnvironment

log = logging.getLogger(__name__)

_FILE_PREFIX: Final = "worker-"
_FILE_SUFFIX: Final = ".json"


def default_consumer_name() -> str:
    """``<host name>-<pid>``: two workers on one host never share it. In a container
    the worker is usually pid 1, so a restarted container keeps its name and finishes
    its own pending entries at once; elsewhere a restarted worker's leftovers are taken
    over by any worker after ``claim_idle_ms``."""
    return f"{socket.gethostname() or 'worker'}-{os.getpid()}"


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$FLEETTRACE_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/fleettrace``, else a
    directory of this user's under the temporary directory."""
    local = LocalEnvironment.read(environ)
    if local.runtime_dir:
        return Path(local.runtime_dir)
    if local.xdg_runtime_dir:
        return Path(local.xdg_runtime_dir) / "fleettrace"
    return Path(tempfile.gettempdir()) / f"fleettrace-{os.getuid()}"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigurationError(
            f"runtime directory {path} is not a directory of this user; "
            f"set {RUNTIME_DIR_VARIABLE} to one"
        )
    return path


@dataclass(frozen=True, slots=True)
class LocalWorker:
    """A worker process of this host, as its runtime file describes it."""

    pid: int
    consumer: str
    namespace: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive all the same
    return True


class PresenceFile:
    """The runtime file of this worker process: written at start, removed at exit."""

    def __init__(self, directory: Path, consumer: str, namespace: str) -> None:
        self.directory = directory
        self.consumer = consumer
        self.namespace = namespace
        self.path = directory / f"{_FILE_PREFIX}{os.getpid()}{_FILE_SUFFIX}"
        self.written = False

    def write(self) -> bool:
        """Best effort: a worker on a read-only file system still runs (its probe then
        needs ``--consumer``); says so once in the log."""
        record = {"pid": os.getpid(), "consumer": self.consumer, "namespace": self.namespace}
        try:
            _private_dir(self.directory)
            partial = self.path.with_suffix(".tmp")
            partial.write_text(json.dumps(record))
            partial.replace(self.path)
        except (OSError, ConfigurationError) as error:
            log.warning(
                "cannot write %s (%s): `fleettrace worker --check` needs --consumer %s",
                self.path,
                error,
                self.consumer,
            )
            return False
        self.written = True
        return True

    def remove(self) -> None:
        if self.written:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.written = False


def local_workers(directory: Path) -> list[LocalWorker]:
    """Workers of this host whose process still runs, from their runtime files (files
    of processes that are gone are removed)."""
    if not directory.is_dir():
        return []
    _private_dir(directory)
    found = []
    for path in sorted(directory.glob(f"{_FILE_PREFIX}*{_FILE_SUFFIX}")):
        try:
            record = json.loads(path.read_text())
            worker = LocalWorker(
                int(record["pid"]), str(record["consumer"]), str(record["namespace"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(worker.pid):
            found.append(worker)
        else:
            # Left by a worker that was killed: the directory is ours, tidy it.
            with contextlib.suppress(OSError):
                path.unlink()
    return found


#: ``--check`` takes a health snapshot older than this (several missed writes) as dead.
HEALTH_FRESH_S: Final = 15.0


def check_health(client: redis.Redis, keys: Keys, consumer: str) -> bool:
    """``--check``: the named worker wrote its health in the last ``HEALTH_FRESH_S``
    seconds and said it was ready."""
    try:
        raw = client.get(keys.worker_health(consumer))
    except redis.RedisError:
        return False
    if raw is None:
        return False
    try:
        health = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(health, dict) or health.get("ready") is not True:
        return False
    # The key outlives a killed worker by its TTL; a stale snapshot is not a ready worker.
    updated_at = health.get("updated_at")
    return isinstance(updated_at, int | float) and time.time() - updated_at <= HEALTH_FRESH_S
