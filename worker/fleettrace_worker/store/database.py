"""How the worker side reaches PostgreSQL: a connection pool made from a URL, and the
one place where psycopg's errors become fleettrace errors.

A pool hides why it could not connect (``PoolTimeout`` says only that it waited), so
when it gives up, :func:`connection` makes one direct attempt to learn the reason and
reports that: a refused login or a missing database is a :class:`ConfigurationError`
(retrying cannot help), a server that is down or not accepting connections is
:class:`DatabaseUnavailable` (retry with backoff).

Every other psycopg error is sorted by its SQLSTATE in one table,
:data:`SQLSTATE_VERDICTS`, because psycopg's exception classes do not say whether the
rows or the server are at fault: a failover's read-only transaction (25006) is an
``InternalError``, a connection lost in the middle of a COPY an ``OperationalError``
or ``InterfaceError`` without any SQLSTATE, and both once turned a failover into
dead letters. Only what is wrong with the rows themselves is :class:`StoreRefused`
(the caller narrows it down to the one record and dead-letters that); everything
else keeps the batch and is retried.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Final

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from fleettrace.connection import redact_url
from fleettrace.errors import ConfigurationError, PermanentError
from fleettrace_worker.errors import DatabaseUnavailable

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


class StoreRefused(PermanentError):
    """PostgreSQL refused the rows themselves (a value, a constraint), not the
    connection: the same rows will be refused again, other rows may be taken."""


class Verdict(StrEnum):
    """What a PostgreSQL error says about the batch that met it."""

    #: The server, the connection or the moment: keep the batch and try again.
    RETRY = "retry"
    #: Something in the rows: find the record and dead-letter it.
    REFUSED = "refused"
    #: A setting that cannot work (login, database name): stop and say so.
    CONFIGURATION = "configuration"


#: Verdicts by SQLSTATE: a five-character code wins over its two-character class.
#: A code or class that is not listed, or an error without a SQLSTATE, keeps the batch
#: (see :func:`verdict`): a record is dead-lettered only when the server said the
#: record is wrong.
SQLSTATE_VERDICTS: Final[dict[str, Verdict]] = {
    "08": Verdict.RETRY,  # connection exception
    "22": Verdict.REFUSED,  # data exception: a value out of range, a bad encoding
    "23": Verdict.REFUSED,  # integrity constraint violation: CHECK, NOT NULL, foreign key
    "25006": Verdict.RETRY,  # read-only transaction: a failover, a standby promoted late
    "25P03": Verdict.RETRY,  # idle-in-transaction timeout
    "28": Verdict.CONFIGURATION,  # invalid authorization
    "3D": Verdict.CONFIGURATION,  # no such database
    "40": Verdict.RETRY,  # transaction rollback: deadlock, serialization failure
    "53": Verdict.RETRY,  # insufficient resources: disk full, too many connections
    "54": Verdict.REFUSED,  # program limit exceeded by a value (an index row too large)
    "55P03": Verdict.RETRY,  # lock not available (lock_timeout)
    "57014": Verdict.RETRY,  # query canceled (statement_timeout)
    "57P01": Verdict.RETRY,  # admin shutdown
    "57P02": Verdict.RETRY,  # crash shutdown
    "57P03": Verdict.RETRY,  # cannot connect now (starting up, shutting down)
    "58": Verdict.RETRY,  # system error (I/O)
}


def known(sqlstate: str) -> bool:
    """Whether :data:`SQLSTATE_VERDICTS` lists ``sqlstate`` or its class."""
    return sqlstate in SQLSTATE_VERDICTS or sqlstate[:2] in SQLSTATE_VERDICTS


def verdict(error: psycopg.Error) -> Verdict:
    """What ``error`` says about the batch: by SQLSTATE code, then class; without a
    SQLSTATE by exception class (``DataError`` and ``IntegrityError`` raised by psycopg
    itself while sending a value are the rows' fault; a lost connection is not)."""
    state = error.sqlstate
    if state:
        found = SQLSTATE_VERDICTS.get(state) or SQLSTATE_VERDICTS.get(state[:2])
        return found or Verdict.RETRY
    if isinstance(error, psycopg.DataError | psycopg.IntegrityError):
        return Verdict.REFUSED
    return Verdict.RETRY


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
    statement_timeout_ms: int | None = None,
    lock_timeout_ms: int | None = None,
) -> ConnectionPool:
    """An open pool for ``url``; it connects in the background, so a database that is
    down now does not stop the caller from starting (the first :func:`connection`
    reports it). Options such as ``sslmode`` travel in the URL untouched.

    ``statement_timeout_ms`` and ``lock_timeout_ms`` (0 or None: the server's own
    setting) are set on every connection the pool makes, so a statement blocked by a
    lock or a stuck server ends with SQLSTATE 55P03 or 57014 (retried) instead of
    holding a batch for ever."""
    params = parse_url(url)
    kwargs: dict[str, object] = {}
    if "connect_timeout" not in params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
    timeouts = {
        name: value
        for name, value in (
            ("statement_timeout", statement_timeout_ms),
            ("lock_timeout", lock_timeout_ms),
        )
        if value
    }

    def configure(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        for name, value in timeouts.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, f"{int(value)}ms"))
        conn.commit()

    pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        timeout=timeout_s,
        # A connection that died with its server is found and replaced before use,
        # instead of failing the first statement after a database restart.
        check=ConnectionPool.check_connection,
        configure=configure if timeouts else None,
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
    """A pooled connection; psycopg's errors leave as fleettrace errors.

    A failure while the block runs is translated when :data:`SQLSTATE_VERDICTS` (or,
    without a SQLSTATE, the exception class) says what it means: a server that went
    away mid-statement, a read-only or timed-out transaction is
    ``DatabaseUnavailable`` (callers retry), rows the server refused are
    :class:`StoreRefused`. An error with a SQLSTATE the table does not list (a
    syntax error, a missing table) leaves as psycopg raised it: for a command it is
    a bug to report; the worker's store turns it into a retry (``persist.py``).
    """
    try:
        with pool.connection() as conn:
            yield conn
    except PoolTimeout:
        raise _diagnose(_url(pool), pool.timeout) from None
    except psycopg.Error as error:
        if error.sqlstate and not known(error.sqlstate):
            raise
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
    error: psycopg.Error, url: str
) -> ConfigurationError | DatabaseUnavailable | StoreRefused:
    """The fleettrace error for a psycopg error, in one line with its SQLSTATE."""
    reason = _reason(error)
    where = describe_target(url)
    state = f" (SQLSTATE {error.sqlstate})" if error.sqlstate else ""
    judged = verdict(error)
    if judged is Verdict.REFUSED:
        return StoreRefused(f"PostgreSQL refused the rows: {reason}{state}")
    if judged is Verdict.CONFIGURATION or (
        error.sqlstate is None and _PERMANENT_CONNECT_FAILURE.search(reason)
    ):
        return ConfigurationError(f"PostgreSQL at {where} refused the connection: {reason}")
    if (error.sqlstate or "").startswith("40"):
        return DatabaseUnavailable(
            f"PostgreSQL at {where} rolled the transaction back: {reason}{state}"
        )
    if error.sqlstate and not known(error.sqlstate):
        return DatabaseUnavailable(f"PostgreSQL at {where} failed the statement: {reason}{state}")
    return DatabaseUnavailable(f"PostgreSQL at {where} is unavailable: {reason}{state}")


def url_of(pool: ConnectionPool) -> str:
    """The URL a pool connects to (for messages: pass it to :func:`describe_target`)."""
    return _url(pool)


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
