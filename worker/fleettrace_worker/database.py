"""How the worker side reaches PostgreSQL: a connection pool made from a URL, and the
one place where psycopg's errors become fleettrace errors.

A pool hides why it could not connect (``PoolTimeout`` says only that it waited), so
when it gives up, :func:`connection` makes one direct attempt to learn the reason and
reports that: a refused login or a missing database is a :class:`ConfigurationError`
(retrying cannot help), a server that is down or not accepting connections is
:class:`DatabaseUnavailable` (retry with backoff).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from fleettrace.connection import redact_url
from fleettrace.errors import ConfigurationError, DatabaseUnavailable

#: Seconds libpq waits for a server to answer a connection attempt, unless the URL says.
CONNECT_TIMEOUT_S: Final = 5
#: Seconds a caller waits for a pooled connection before the pool is declared unreachable.
POOL_TIMEOUT_S: Final = 10.0
_SCHEMES: Final = ("postgresql", "postgres")
_SCHEME_RE: Final = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.\-]*)://")
_QUOTED_RE: Final = re.compile(r'"([^"]*)"')
#: libpq messages that mean the settings are wrong, not that the server is away.
_PERMANENT_CONNECT_FAILURE: Final = re.compile(
    r"password authentication failed|no password supplied|role \".*\" does not exist|"
    r"database \".*\" does not exist|no pg_hba\.conf entry|"
    r"invalid \w+ value|invalid connection option|SSL was required|certificate",
    re.IGNORECASE,
)


def describe_target(url: str) -> str:
    """``user@host:port/dbname`` for messages: never the password."""
    params = parse_url(url)
    user = params.get("user", "")
    host = params.get("host", "") or "localhost"
    port = params.get("port", "")
    where = f"{host}:{port}" if port else host
    name = params.get("dbname", "")
    return f"{user + '@' if user else ''}{where}/{name}"


def parse_url(url: str) -> dict[str, str]:
    """The connection parameters of a ``postgresql://`` URL or a libpq ``key=value``
    string; :class:`ConfigurationError` when it is neither."""
    match = _SCHEME_RE.match(url)
    scheme = match[1].lower() if match else ""
    if scheme and scheme not in _SCHEMES:
        raise ConfigurationError(
            f"database URL must start with postgresql:// or postgres://, got {scheme}://"
        )
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        reason = _hide_quoted_secrets(_first_line(str(error)).replace(url, "<url>"), url)
        raise ConfigurationError(f"database URL is not valid: {reason}") from None
    return {name: str(value) for name, value in params.items() if value is not None}


def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    timeout_s: float = POOL_TIMEOUT_S,
) -> ConnectionPool:
    """An open pool for ``url``; it connects in the background, so a database that is
    down now does not stop the caller from starting (the first :func:`connection`
    reports it). Options such as ``sslmode`` travel in the URL untouched."""
    params = parse_url(url)
    kwargs: dict[str, object] = {}
    if "connect_timeout" not in params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
    pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        timeout=timeout_s,
        # A connection that died with its server is found and replaced before use,
        # instead of failing the first statement after a database restart.
        check=ConnectionPool.check_connection,
        name="fleettrace",
        open=False,
    )
    pool.open(wait=False)
    return pool


def create_checked_pool(url: str, *, min_size: int = 1, max_size: int = 1) -> ConnectionPool:
    """A pool for a short command: the database is reached once first, so a wrong URL
    or a server that is down is reported at once rather than after the pool's wait."""
    connect(url).close()
    return create_pool(url, min_size=min_size, max_size=max_size)


@contextmanager
def connection(pool: ConnectionPool) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A pooled connection; psycopg's connection failures leave as fleettrace errors.

    A failure while the block runs (a server that went away mid-statement) is
    translated too, so callers catch ``TransientError`` and nothing else.
    """
    try:
        with pool.connection() as conn:
            yield conn
    except PoolTimeout:
        raise _diagnose(_url(pool), pool.timeout) from None
    except psycopg.OperationalError as error:
        raise translate(error, _url(pool)) from None


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """One connection outside any pool (the CLI's short commands)."""
    params = parse_url(url)
    kwargs: dict[str, object] = {}
    if "connect_timeout" not in params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        return psycopg.connect(url, autocommit=autocommit, **kwargs)  # type: ignore[arg-type]
    except psycopg.OperationalError as error:
        raise translate(error, url) from None


def translate(
    error: psycopg.OperationalError, url: str
) -> ConfigurationError | DatabaseUnavailable:
    """The fleettrace error for a psycopg connection failure, in one line.

    A deadlock or serialization failure is an ``OperationalError`` too: the server
    rolled the transaction back and the same transaction may succeed when retried.
    """
    reason = _reason(error)
    where = describe_target(url)
    if (error.sqlstate or "").startswith("40"):  # class 40: transaction rollback
        return DatabaseUnavailable(f"PostgreSQL at {where} rolled the transaction back: {reason}")
    if _PERMANENT_CONNECT_FAILURE.search(reason):
        return ConfigurationError(f"PostgreSQL at {where} refused the connection: {reason}")
    return DatabaseUnavailable(f"PostgreSQL at {where} is unavailable: {reason}")


def _url(pool: ConnectionPool) -> str:
    # create_pool always passes a string; a callable conninfo is not ours to call here.
    return pool.conninfo if isinstance(pool.conninfo, str) else ""


def _diagnose(url: str, waited_s: float) -> ConfigurationError | DatabaseUnavailable:
    try:
        probe = connect(url)
    except (ConfigurationError, DatabaseUnavailable) as error:
        return error
    probe.close()
    return DatabaseUnavailable(
        f"PostgreSQL at {describe_target(url)} accepts connections, but none was free "
        f"within {waited_s:g} s"
    )


def _reason(error: psycopg.Error) -> str:
    """libpq's message without its prefixes and hints: what the server said after
    ``FATAL:``, else the first line."""
    text = str(error).strip()
    if "FATAL:" in text:
        return " ".join(text.rsplit("FATAL:", 1)[1].split())
    first = text.splitlines()[0] if text else ""
    for prefix in ("connection failed:", "connection is bad:"):
        first = first.removeprefix(prefix).strip()
    return first or type(error).__name__


def _hide_quoted_secrets(reason: str, url: str) -> str:
    """libpq quotes the piece of the URL it choked on, which may be the password
    (``unexpected spaces found in "pa ss"``): a quoted piece is kept only when it is
    also in the redacted URL."""
    shown = redact_url(url)
    return _QUOTED_RE.sub(lambda m: m[0] if m[1] in shown else '"***"', reason)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid"
