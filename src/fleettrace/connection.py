"""Where the Redis URL comes from and how a client is made from it.

The variables that name the URL are read by :mod:`fleettrace.settings`; library
code takes URLs and settings as arguments.
"""

from __future__ import annotations

import re
import ssl
from typing import Final
from urllib.parse import parse_qs, urlsplit

import redis

from fleettrace.errors import ConfigurationError

REDIS_URL_VARIABLES: Final = ("FLEETTRACE_REDIS_URL", "REDIS_URL")
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
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
_TLS_FILES: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def tls_file_problem(url: str) -> str | None:
    """Why a TLS file the Redis URL names cannot serve (missing, unreadable, or not
    holding what it should), in one line naming the file; None when all can. redis-py
    only says "Error 2 connecting to host:port. No such file or directory." then,
    without naming the file, and only once it connects."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = parse_qs(parts.query)
    files = {name: query[name][-1] for name in _TLS_FILES if query.get(name)}
    for name, path in files.items():
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            return f"cannot read {path} ({name} of the Redis URL): {error.strerror or error}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if "ssl_ca_certs" in files:
            context.load_verify_locations(cafile=files["ssl_ca_certs"])
    except ssl.SSLError as error:
        path = files["ssl_ca_certs"]
        return f"{path} (ssl_ca_certs of the Redis URL) holds no CA certificate: {error}"
    try:
        if "ssl_certfile" in files:
            context.load_cert_chain(files["ssl_certfile"], files.get("ssl_keyfile"))
    except ssl.SSLError as error:
        path = files["ssl_certfile"]
        return (
            f"{path} (ssl_certfile of the Redis URL) and its key do not make a client "
            f"certificate: {error}"
        )
    return None


def connect_redis(
    url: str, *, socket_timeout_s: float = 5.0, check_files: bool = True
) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``).

    ACL users travel as ``redis://user:password@host``; TLS options as query
    parameters that redis-py understands (``ssl_cert_reqs``, ``ssl_ca_certs``...).
    The client is lazy: nothing connects until the first command. A TLS file the URL
    names that cannot serve is a ``ConfigurationError`` naming it
    (:func:`tls_file_problem`), unless ``check_files`` is False (the emitter, which
    must not raise into agent code, counts it as each send's failure instead).
    """
    scheme = urlsplit(url).scheme
    if scheme not in _REDIS_SCHEMES:
        raise ConfigurationError(
            f"Redis URL {redact_url(url)!r} must start with redis://, rediss:// or unix://"
        )
    problem = tls_file_problem(url) if check_files else None
    if problem is not None:
        raise ConfigurationError(problem)
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            health_check_interval=30,
        )
    except ValueError as error:
        raise ConfigurationError(f"Redis URL {redact_url(url)!r} is not valid: {error}") from None
