"""Where the Redis URL comes from and how a client is made from it.

The variables that name the URL are read by :mod:`fleettrace.settings`; library
code takes URLs and settings as arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, urlsplit

from fleettrace.environment import redact_url
from fleettrace.errors import ConfigurationError

if TYPE_CHECKING:
    import redis  # annotations only: redis-py loads when a client is made

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
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
    import ssl  # noqa: PLC0415 - only a rediss:// URL needs it

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
    url: str, *, socket_timeout_s: float = 5.0, check_files: bool = True, cluster: bool = False
) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``); with
    ``cluster``, a Redis Cluster client that takes ``url`` as its seed node
    (:mod:`fleettrace.cluster`). Every client fleettrace makes is made here.

    ACL users travel as ``redis://user:password@host``; TLS options as query
    parameters that redis-py understands (``ssl_cert_reqs``, ``ssl_ca_certs``...).
    A single server's client packs its commands with hiredis
    (:mod:`fleettrace.packing`). The client is lazy: nothing connects until the first
    command. A TLS file the URL
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
    options = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "health_check_interval": 30,
    }
    if cluster and scheme == "unix":
        raise ConfigurationError(
            f"Redis URL {redact_url(url)!r}: a Redis Cluster is reached over redis:// or rediss://"
        )
    try:
        if cluster:
            # redis-py's cluster client, loaded only by a process that asks for it.
            from fleettrace.cluster import connect_cluster  # noqa: PLC0415

            return connect_cluster(url, options)
        # Imported here, not at the top: redis-py (with its asyncio and observability
        # modules) is most of what `import fleettrace` would otherwise cost.
        import redis  # noqa: PLC0415

        from fleettrace.packing import command_packer  # noqa: PLC0415 - loads hiredis

        packer = command_packer()
        if packer is not None:
            return redis.Redis.from_url(url, **options, command_packer=packer)
        return redis.Redis.from_url(url, **options)
    except ValueError as error:
        raise ConfigurationError(f"Redis URL {redact_url(url)!r} is not valid: {error}") from None
