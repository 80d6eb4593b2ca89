"""The one way tests wait: for a condition, never for a time.

A sleep that "should be long enough" orders events on an idle machine and fails on a
loaded one (the suite runs on 2 shared cores); a wait on the condition the test needs
takes as long as it must and fails with what it waited for.

    wait_until(lambda: trace_rows(db) == 20, 60, "20 rows stored")
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: How often a condition is checked: short against the waits, cheap for the servers.
POLL_S = 0.02
DEFAULT_TIMEOUT_S = 30.0


def wait_until(
    predicate: Callable[[], object],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    message: str = "the condition",
    *,
    poll_s: float = POLL_S,
) -> float:
    """Call ``predicate`` until it returns a true value; the seconds that took.

    Fails the test (AssertionError naming ``message``) if it is still false after
    ``timeout_s``. The timeout is a bound on a hang, not a speed target: make it
    generous, the wait ends as soon as the condition holds.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {message}")
        time.sleep(poll_s)
    return time.monotonic() - started
