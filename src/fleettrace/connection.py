"""Where the Redis URL comes from and how a client is made from it.

Environment variables are read here and in the CLI only: library code takes URLs
and settings as arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import redis

from fleettrace.errors import ConfigurationError

REDIS_URL_VARIABLES: Final = ("FLEETTRACE_REDIS_URL", "REDIS_URL")
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")


def first_set(names: Sequence[str], environ: Mapping[str, str] | None = None) -> str | None:
    """The value of the first of ``names`` that is set and not blank, else ``None``:
    fleettrace's own variable wins over the conventional one it falls back to."""
    env = os.environ if environ is None else environ
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def redis_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``FLEETTRACE_REDIS_URL``, else ``REDIS_URL``, else ``None``."""
    return first_set(REDIS_URL_VARIABLES, environ)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, fit for logs and errors."""
    # Split the netloc by hand: urllib's ``port`` raises on a malformed port, and a
    # URL that is being reported as bad must still be redacted.
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect_redis(url: str, *, socket_timeout_s: float = 5.0) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``).

    ACL users travel as ``redis://user:password@host``; TLS options as query
    parameters that redis-py understands (``ssl_cert_reqs``, ``ssl_ca_certs``...).
    The client is lazy: nothing connects until the first command.
    """
    scheme = urlsplit(url).scheme
    if scheme not in _REDIS_SCHEMES:
        raise ConfigurationError(
            f"Redis URL {redact_url(url)!r} must start with redis://, rediss:// or unix://"
        )
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            health_check_interval=30,
        )
    except ValueError as error:
        raise ConfigurationError(f"Redis URL {redact_url(url)!r} is not valid: {error}") from None
