"""Sums over producers: each producer's contribution clamped at zero, whole-number stats
added as integers, gauges the largest value, and junk contributing nothing."""

from __future__ import annotations

import redis

from fleettrace.keys import Keys, split_live_field
from fleettrace.producers import clamped, known_producers, merge_fields


def _stat(name: str) -> str:
    return split_live_field(name)[1]


def test_junk_and_negative_contributions_lower_nothing() -> None:
    assert clamped(None) == 0.0
    assert clamped(b"not a number") == 0.0
    assert clamped("-5") == 0.0
    assert clamped("inf") == 0.0
    assert clamped(2.5) == 2.5
    merged = merge_fields(
        [
            {b"a=1|count": b"3", b"a=1|sum": b"1.5", b"a=1|value": b"7"},
            {b"a=1|count": b"-100", b"a=1|sum": b"junk", b"a=1|value": b"nan?"},
            {"a=1|count": "1e+3", "a=1|sum": "-9.5", "a=1|value": "-2"},
        ],
        _stat,
    )
    # count: 3 + 0 (negative) + 1000 ("1e+3" as HINCRBYFLOAT may render it)
    assert merged == {"a=1|count": "1003", "a=1|sum": "1.5", "a=1|value": "7"}


def test_whole_number_stats_stay_exact_past_two_to_the_53() -> None:
    big = 2**60 + 1
    merged = merge_fields(
        [{"a=1|sum.whole": str(big), "a=1|d=p3/25.0": "2"}, {"a=1|sum.whole": "1"}],
        _stat,
    )
    assert merged == {"a=1|sum.whole": str(big + 1), "a=1|d=p3/25.0": "2"}


def test_known_producers_skip_members_that_cannot_name_keys(
    redis_client: redis.Redis, keys: Keys
) -> None:
    redis_client.sadd(keys.producers, "alice", "bad name!", "bob")
    assert known_producers(redis_client, keys) == ["alice", "bob", keys.producer]
