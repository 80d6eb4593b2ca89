"""The worker's errors: the branches of fleettrace's one exception tree that only the
worker meets (PostgreSQL, the schema, the forwarding backends).

They subclass the agent package's :class:`~fleettrace.errors.TransientError` and
:class:`~fleettrace.errors.PermanentError`, so there is still one tree and a retry
loop tests for ``TransientError`` and nothing else::

    FleettraceError                          (fleettrace.errors)
    ├── TransientError
    │   ├── RedisUnavailable                 (fleettrace.errors)
    │   ├── DatabaseUnavailable              here
    │   └── ForwardingDeferred               here  (429 / 5xx / timeout / connection)
    │       └── ForwardingUnauthorized       here  (401 / 403: the key or headers)
    └── PermanentError
        ├── ConfigurationError               (fleettrace.errors)
        ├── EmitterClosed                    (fleettrace.errors)
        ├── EntryDecodeError                 (fleettrace.errors)
        ├── SchemaVersionError               here
        └── ForwardingRejected               here  (4xx other than 409/429)
"""

from __future__ import annotations

from fleettrace.errors import PermanentError, TransientError


class DatabaseUnavailable(TransientError):
    """PostgreSQL refused, dropped or timed out the connection."""


class ForwardingDeferred(TransientError):
    """A forwarding backend (LangSmith, an OTLP endpoint) asked us to come back later
    (429, 5xx, timeout, connection error).

    ``retry_after_s`` carries the server's Retry-After when it sent one.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ForwardingUnauthorized(ForwardingDeferred):
    """LangSmith refused the API key (401) or what it may do (403); an OTLP endpoint
    answered 401, 403 or 404 (its headers or URL are wrong).

    A configuration problem, not a bad record: every run would meet the same answer,
    so nothing is dead-lettered for it. The group waits with backoff, reports itself
    not ready and keeps its entries pending until the configuration is fixed. The
    message names the variables to fix (``LANGSMITH_API_KEY``,
    ``OTEL_EXPORTER_OTLP_HEADERS``) and never carries a key.
    """


class SchemaVersionError(PermanentError):
    """The database holds a schema version this code was not written for."""


class ForwardingRejected(PermanentError):
    """LangSmith refused a run, or an OTLP endpoint a request, for good (a 4xx that
    is neither a retry nor a configuration answer)."""
