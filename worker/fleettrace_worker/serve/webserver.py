"""One ASGI application served by uvicorn in a daemon thread: the worker's ``--http``
endpoints and the dashboard share it (docs/dashboard.md).

The listening socket is bound here, before uvicorn starts, so a busy port or a bad
address is one :class:`ConfigurationError` in the caller (uvicorn alone would log it
and exit its thread). uvicorn runs its own event loop in the thread and leaves the
process's signal handlers alone: the worker keeps its warm and cold shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Final

import uvicorn
from starlette.types import ASGIApp

from fleettrace.errors import ConfigurationError
from fleettrace_worker.serve.dashboard.exposure import is_loopback, parse_address

__all__ = ["HttpServer", "is_loopback", "parse_address"]

log = logging.getLogger(__name__)

#: Seconds to wait for uvicorn to start accepting, and for it to stop.
START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 10.0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        """The process's handlers stay the worker's (or the command's)."""


class HttpServer:
    """A running server; :meth:`shutdown` stops it and waits for its thread."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        try:
            self._socket = _bind(host, port)
        except OSError as error:
            raise ConfigurationError(
                f"cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None
        self.host = host
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=5
        )
        self._server = _ThreadServer(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        waited = threading.Event()
        for _ in range(int(START_TIMEOUT_S / 0.01)):
            if self._server.started or not self._thread.is_alive():
                break
            waited.wait(0.01)
        if not self._server.started:
            self.shutdown()
            raise ConfigurationError(f"cannot serve on {host}:{port}: the server did not start")

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except (OSError, SystemExit) as error:
            log.error("http server stopped: %s", error)

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        self._socket.close()

    def server_close(self) -> None:
        """Kept for callers of the former http.server API: shutdown() closes too."""
        self._socket.close()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
