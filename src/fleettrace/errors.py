"""The one exception tree of fleettrace.

Callers mostly need a single decision: is it worth trying again? Errors of Redis,
PostgreSQL and LangSmith are translated into this tree at the one place each is
called, so that retry loops test for ``TransientError`` and nothing else::

    FleettraceError
    ├── TransientError          retry with backoff: the same call may succeed later
    │   ├── RedisUnavailable
    │   ├── DatabaseUnavailable
    │   └── ForwardingDeferred  (LangSmith 429 / 5xx / timeout / connection)
    │       └── ForwardingUnauthorized  (LangSmith 401 / 403: the API key)
    └── PermanentError          retrying the same input cannot help
        ├── ConfigurationError  (bad URL, bad setting)
        ├── EmitterClosed
        ├── EntryDecodeError    (a stream entry that is not a fleettrace batch)
        ├── SchemaVersionError  (database schema the code does not know)
        └── ForwardingRejected  (LangSmith 4xx other than 409/429)
"""

from __future__ import annotations


class FleettraceError(Exception):
    """Base of every error fleettrace raises on purpose."""


class TransientError(FleettraceError):
    """A failure of something outside fleettrace that may go away."""


class PermanentError(FleettraceError):
    """A failure that the same call with the same input will meet again."""


class RedisUnavailable(TransientError):
    """Redis did not answer, refused the connection or is loading."""


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


class ConfigurationError(PermanentError):
    """A setting or URL that cannot work; the message says which and why."""


class EmitterClosed(PermanentError):
    """A record was given to an emitter after ``close()``."""


class EntryDecodeError(PermanentError):
    """A stream entry whose envelope is not a fleettrace batch of a known version."""


class SchemaVersionError(PermanentError):
    """The database holds a schema version this code was not written for."""


class ForwardingRejected(PermanentError):
    """LangSmith refused a run, or an OTLP endpoint a request, for good (a 4xx that
    is neither a retry nor a configuration answer)."""
