"""The one place where redis-py errors become fleettrace errors, for every reader of
Redis (the live reader, the worker's consumer groups, dead letters, trimming).

A refused login or a missing ACL right cannot heal by waiting, so it is a
``ConfigurationError``; everything else Redis can throw at a reader (connection
refused or dropped, timeouts, loading, out of memory) may pass and is
``RedisUnavailable``, which the group loops retry with backoff.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from fleettrace.errors import ConfigurationError, RedisUnavailable


@contextmanager
def translate_redis_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as error:
        raise ConfigurationError(f"Redis refused {action}: {error}") from None
    except redis.RedisError as error:
        raise RedisUnavailable(f"{action}: {error}") from None
