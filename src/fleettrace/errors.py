"""The one exception tree of fleettrace: its root and the branches both sides meet.

Callers mostly need a single decision: is it worth trying again? Errors of Redis,
PostgreSQL and the forwarding backends are translated into this tree at the one
place each is called, so that retry loops test for ``TransientError`` and nothing
else. The errors only the worker meets (PostgreSQL, the schema, forwarding) are in
``fleettrace_worker/errors.py``, subclassing the classes here::

    FleettraceError
    ├── TransientError          retry with backoff: the same call may succeed later
    │   ├── RedisUnavailable
    │   └── (worker) DatabaseUnavailable, ForwardingDeferred > ForwardingUnauthorized
    └── PermanentError          retrying the same input cannot help
        ├── ConfigurationError  (bad URL, bad setting)
        ├── EmitterClosed
        ├── EntryDecodeError    (a stream entry that is not a fleettrace batch)
        └── (worker) SchemaVersionError, ForwardingRejected
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


class ConfigurationError(PermanentError):
    """A setting or URL that cannot work; the message says which and why."""


class EmitterClosed(PermanentError):
    """A record was given to an emitter after ``close()``."""


class EntryDecodeError(PermanentError):
    """A stream entry whose envelope is not a fleettrace batch of a known version."""
