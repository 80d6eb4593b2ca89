"""What every dashboard request reads from: its settings and one Redis client."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict

from fleettrace.connection import connect_redis, redact_url
from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.serve.dashboard import queries


@dataclass(frozen=True)
class DashboardSettings:
    """Where the dashboard reads, and the token its pages need (None: loopback only)."""

    redis_url: str
    database_url: str
    namespace: str
    token: str | None = field(default=None, repr=False)


class Dashboard:
    """The settings and a Redis client (redis-py's pool is thread-safe: the sync
    endpoints run in Starlette's thread pool). PostgreSQL is one connection per
    request (:func:`queries.connect`)."""

    def __init__(self, settings: DashboardSettings) -> None:
        # A URL libpq cannot read is refused here, once: libpq's message about it quotes
        # the offending piece, which could be the password, and a page would show it.
        try:
            conninfo_to_dict(settings.database_url)
        except psycopg.Error:
            raise ConfigurationError(
                f"cannot read the database URL {redact_url(settings.database_url)!r}"
            ) from None
        self.settings = settings
        self.database_url = settings.database_url
        self.redis: redis.Redis = connect_redis(settings.redis_url, socket_timeout_s=10.0)

    def keys(self, asked: str | None) -> Keys:
        """The namespace of ``?namespace=`` (checked), else the dashboard's own."""
        with translate_redis_errors("checking the namespace"):
            return queries.namespace_keys(self.redis, self.settings.namespace, asked)
