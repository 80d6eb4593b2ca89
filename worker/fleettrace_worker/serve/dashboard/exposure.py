"""Where the dashboard may listen without a token: loopback only. Free of the HTTP
stack's imports, so ``fleettrace worker --dashboard`` checks it before anything runs
(and a base install reports the missing extra, not a missing Starlette)."""

from __future__ import annotations

import ipaddress
from typing import Final

from fleettrace.errors import ConfigurationError

TOKEN_ENV: Final = "FLEETTRACE_DASHBOARD_TOKEN"  # noqa: S105 (a variable name)
#: A token shorter than this is refused: it would be guessed.
MIN_TOKEN_CHARS: Final = 16


def parse_address(address: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` -> (host, port); ``:9464`` listens on every interface."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"--http must be HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 (asked for by ':PORT')


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve the dashboard beyond this machine without a token (one line)."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigurationError(
            f"{TOKEN_ENV} must be at least {MIN_TOKEN_CHARS} characters "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if not is_loopback(host) and not token:
        raise ConfigurationError(
            f"the dashboard on {host} would show the fleet's costs to the network: "
            f"set {TOKEN_ENV}, or bind to 127.0.0.1"
        )
