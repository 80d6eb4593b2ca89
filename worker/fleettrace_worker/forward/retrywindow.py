"""How long a forwarding group keeps retrying a backend that keeps failing.

Shared by every group that forwards records to an HTTP backend (``langsmith``,
``otlp``): the group loop retries a ``ForwardingDeferred`` with capped backoff, and
this window decides when the outage has lasted long enough that each batch still
failing becomes dead letters at once, so a long outage drains into the dead-letter
stream instead of holding the trace stream.

The outage is counted across batches, from the first failure after the backend last
took something. A ``ForwardingUnauthorized`` (401/403, and 404 for OTLP: the
configuration, not the record) never counts: the group waits for the fix as long as
it takes, and never dead-letters for it.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn

from fleettrace.errors import PermanentError
from fleettrace_worker.errors import ForwardingDeferred, ForwardingUnauthorized


class RetryWindowOver(PermanentError):
    """The backend kept failing for longer than ``retry_for_s``: the batch is given up."""


class RetryWindow:
    """The outage clock of one forwarding group (one per loop; used by its thread)."""

    def __init__(
        self, backend: str, retry_for_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.backend = backend
        self.retry_for_s = retry_for_s
        self.clock = clock
        self.failing_since: float | None = None

    def succeeded(self) -> None:
        """The backend took what it was sent: the next failure starts a new outage."""
        self.failing_since = None

    def fail(self, deferred: ForwardingDeferred, *, answered: bool) -> NoReturn:
        """Raise ``deferred`` to be retried, or :class:`RetryWindowOver` once the
        backend has failed without a break for ``retry_for_s``. ``answered``: the
        backend took part of this batch before failing, so the outage starts now."""
        if isinstance(deferred, ForwardingUnauthorized):
            # The configuration, not the backend's health: wait for it as long as it
            # takes, and count an outage afresh once it is accepted.
            self.failing_since = None
            raise deferred
        now = self.clock()
        if answered or self.failing_since is None:
            self.failing_since = now
        failing_for_s = now - self.failing_since
        if failing_for_s >= self.retry_for_s:
            raise RetryWindowOver(
                f"{self.backend} kept failing for {failing_for_s:.1f} s "
                f"(retry_for_s={self.retry_for_s:g}); last: {deferred}"
            )
        raise deferred


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
