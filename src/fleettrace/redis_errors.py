"""The one place where redis-py errors become fleettrace errors, for every reader of
Redis (the live reader, the worker's consumer groups, dead letters, trimming).

A refused login, a missing ACL right or a server certificate the client does not
trust (a wrong CA, a name the certificate is not for) cannot heal by waiting, so it
is a ``ConfigurationError``, as libpq's certificate errors are for PostgreSQL;
everything else Redis can throw at a reader (connection refused or dropped,
timeouts, loading, out of memory) may pass and is ``RedisUnavailable``, which the
group loops retry with backoff.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fleettrace.errors import ConfigurationError, RedisUnavailable


@contextmanager
def translate_redis_errors(action: str) -> Iterator[None]:
    import redis  # noqa: PLC0415 - loaded by whoever made the client; kept off `import fleettrace`

    try:
        yield
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as error:
        raise ConfigurationError(f"Redis refused {action}: {error}") from None
    except redis.ConnectionError as error:
        if _certificate_refused(error):
            raise ConfigurationError(
                f"{action}: the Redis server's TLS certificate is not trusted: {error}"
            ) from None
        if _ssl_reason(error, "CERTIFICATE_REQUIRED"):
            raise ConfigurationError(f"{action}: {CLIENT_CERTIFICATE_DEMANDED}: {error}") from None
        raise RedisUnavailable(f"{action}: {error}{handshake_hint(error)}") from None
    except redis.RedisError as error:
        raise RedisUnavailable(f"{action}: {error}") from None


#: What a refusal for want of a client certificate means, said in fleettrace's words.
CLIENT_CERTIFICATE_DEMANDED = (
    "the Redis server demands a client certificate "
    "(set ssl_certfile and ssl_keyfile in the Redis URL)"
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and what caused it (redis-py keeps ssl's error only as the context
    of its ConnectionError; retries may nest it)."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _ssl_reason(error: BaseException, reason: str) -> bool:
    import ssl  # noqa: PLC0415 - error paths only; kept off `import fleettrace`

    return any(isinstance(e, ssl.SSLError) and reason in str(e) for e in _chain(error))


def handshake_hint(error: BaseException) -> str:
    """What to add to a connection error that may be a refused client certificate:
    with TLS 1.3 a server that demands one may just end the connection, which reads
    as an EOF, not as its reason."""
    if _ssl_reason(error, "CERTIFICATE_REQUIRED"):
        return f" ({CLIENT_CERTIFICATE_DEMANDED})"
    import ssl  # noqa: PLC0415

    if any(isinstance(e, ssl.SSLEOFError) for e in _chain(error)):
        return (
            " (the TLS connection ended during the handshake: does the Redis server demand"
            " a client certificate? set ssl_certfile and ssl_keyfile in the Redis URL)"
        )
    return ""


def _certificate_refused(error: BaseException) -> bool:
    """Whether the TLS handshake failed on the server's certificate. redis-py keeps
    ssl's error only as the context of its ConnectionError (retries may nest it)."""
    import ssl  # noqa: PLC0415

    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
