"""Capped exponential backoff with jitter."""

from __future__ import annotations

import random

from fleettrace_worker.stream.backoff import backoff_delay_s


def test_delay_doubles_up_to_the_cap_within_its_upper_half() -> None:
    rng = random.Random(7)
    for attempt, ceiling in enumerate((1.0, 2.0, 4.0, 8.0, 10.0, 10.0)):
        for _ in range(50):
            delay = backoff_delay_s(attempt, initial_s=1.0, max_s=10.0, rng=rng)
            assert ceiling / 2 <= delay <= ceiling


def test_a_huge_attempt_count_stays_at_the_cap() -> None:
    assert backoff_delay_s(10_000, initial_s=1.0, max_s=3.0) <= 3.0


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    assert backoff_delay_s(0, initial_s=0.1, max_s=1.0, retry_after_s=30.0) == 30.0
    assert backoff_delay_s(3, initial_s=1.0, max_s=8.0, retry_after_s=0.0) >= 4.0
