"""Capped exponential backoff with jitter, for loops that wait out an outage.

Jitter spreads the retries of many workers that lost the same server at the same
moment, so they do not all come back in one burst.
"""

from __future__ import annotations

import random


def backoff_delay_s(
    attempt: int,
    *,
    initial_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0).

    The delay doubles from ``initial_s`` up to ``max_s`` and is drawn from its upper
    half. A server's Retry-After is a floor, honoured even above ``max_s``: asking
    again sooner would only be refused again.
    """
    ceiling = min(max_s, initial_s * 2 ** min(attempt, 62))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay
