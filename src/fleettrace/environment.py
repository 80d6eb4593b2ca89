"""The names of the agent side's environment variables and the one place the process
environment is read (:func:`environment`), with what reading a variable needs (the
first of several names that is set, a URL with its secrets hidden).

Apart from :mod:`fleettrace.settings` (the settings objects, on pydantic-settings)
because the key layout, the connection and the price file need the names at import,
and pydantic-settings loads asyncio and ssl: a process pays for it when it first
reads its settings, not when it imports a hook (``tests/test_import_cost.py``).
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Mapping
from typing import Final

REDIS_URL_VARIABLES: Final = ("FLEETTRACE_REDIS_URL", "REDIS_URL")
#: Names of settings that hold secrets: password, ssl_password, sslpassword, and any
#: other *password*, *secret* or *token*.
_SECRET_NAME: Final = r"[A-Za-z_]*(?:password|secret|token)[A-Za-z_]*"  # noqa: S105
_QUERY_SECRET_RE: Final = re.compile(rf"(^|[&;])({_SECRET_NAME})=[^&;]*", re.IGNORECASE)
_DSN_SECRET_RE: Final = re.compile(
    rf"\b({_SECRET_NAME})\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """The URL with every secret in it replaced by ``***``, fit for logs and errors.

    Secrets hide in three places: the password of the user info
    (``redis://user:pw@host``); query parameters, since redis-py reads ``password``
    and ``ssl_password`` (a client key's passphrase) from the query and libpq reads
    ``password`` and ``sslpassword`` there; and libpq's ``key=value`` strings
    (``host=db password=pw``), which are not URLs at all.
    """
    if "://" not in url:
        return _DSN_SECRET_RE.sub(r"\1=***", url)
    # Split by hand, not with urllib: it raises on a malformed port or IPv6 address,
    # and a URL that is being reported as bad must still be redacted; rebuilding it
    # would also turn unix:///path into unix:/path.
    start = url.index("://") + 3
    stop = len(url)
    for mark in "?#":
        found = url.find(mark, start)
        if found != -1:
            stop = min(stop, found)
    # The user info ends at the last '@' before the query, so that a password holding
    # an unescaped '/' is still hidden whole.
    at = url.rfind("@", start, stop)
    head = url[:start]
    if at != -1 and ":" in url[start:at]:
        head += url[start:at].split(":", 1)[0] + ":***"
    elif at != -1:
        head += url[start:at]
    where = url[at:stop] if at != -1 else url[start:stop]
    rest = url[stop:]
    if rest.startswith("?"):
        query, hash_mark, fragment = rest[1:].partition("#")
        rest = "?" + _QUERY_SECRET_RE.sub(r"\1\2=***", query) + hash_mark + fragment
    return head + where + rest


#: The URL's TLS file parameters that redis-py reads, in the order it needs them.


NAMESPACE_VARIABLE: Final = "FLEETTRACE_NAMESPACE"
PRODUCER_VARIABLE: Final = "FLEETTRACE_PRODUCER"
PRICES_VARIABLE: Final = "FLEETTRACE_PRICES"
#: Whether the Redis URL is a seed node of a Redis Cluster (docs/scaling.md).
REDIS_CLUSTER_VARIABLE: Final = "FLEETTRACE_REDIS_CLUSTER"
#: How many replicas must hold a write before it counts: ``auto`` (the default: one
#: on a cluster whose master of the namespace has a replica connected, none
#: otherwise), ``0`` (never wait) or a number; and how long a write waits for them.
WAIT_REPLICAS_VARIABLE: Final = "FLEETTRACE_REDIS_WAIT_REPLICAS"
WAIT_TIMEOUT_VARIABLE: Final = "FLEETTRACE_REDIS_WAIT_TIMEOUT_MS"
EMITTER_PREFIX: Final = "FLEETTRACE_EMITTER_"
#: How many shards the namespace is split into (docs/scaling.md), and the shard an
#: emitter process writes to (else chosen from its host name and process id).
SHARDS_VARIABLE: Final = "FLEETTRACE_SHARDS"
SHARD_VARIABLE: Final = "FLEETTRACE_SHARD"

#: The mapping a :meth:`EnvironmentSettings.read` call reads instead of the process
#: environment (tests and the CLI pass one); None: the process environment.
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "fleettrace_environ", default=None
)


def environment() -> Mapping[str, str]:
    """The environment settings are read from: the mapping a :meth:`read` call was
    given, else the process environment. The one place ``os.environ`` is touched."""
    given = _ENVIRON.get()
    return os.environ if given is None else given


def redis_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``FLEETTRACE_REDIS_URL``, else ``REDIS_URL``, else ``None``."""
    return first_set(REDIS_URL_VARIABLES, environ)


def first_set(names: tuple[str, ...], environ: Mapping[str, str] | None = None) -> str | None:
    """The value of the first of ``names`` that is set and not blank, else ``None``:
    fleettrace's own variable wins over the conventional one it falls back to."""
    env = environment() if environ is None else environ
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None
