"""Relative-error histograms (sketches) and exact sums for the live counters.

Why: fixed buckets put most observations of a fast operation into one wide bucket, and
interpolating inside it showed "p50 5 ms" for an actor that takes 0.2 ms. A sketch in
the manner of DDSketch keeps log-spaced buckets instead, so every quantile it reports
is within a stated *relative* error of the true one, at any scale.

The mapping (the same for every writer, so merging is adding counts, without loss):

- A positive value ``v`` falls into bucket ``i = ceil(log(v) / log(GAMMA))``, which
  covers ``(GAMMA**(i-1), GAMMA**i]``; ``GAMMA = (1 + RELATIVE_ACCURACY) /
  (1 - RELATIVE_ACCURACY)``. Reporting the bucket's harmonic midpoint
  ``2 * GAMMA**i / (GAMMA + 1)`` is within ``RELATIVE_ACCURACY`` of any value in it.
- Zero has a bucket of its own; a negative value uses the bucket of ``-v``, mirrored.
- Magnitudes below ``MIN_MAGNITUDE`` collapse into the lowest bucket (the collapse
  rule: their quantile reads as about ``MIN_MAGNITUDE``, an absolute error under it);
  no valid value exceeds ``MAX_METRIC_VALUE`` (1e15), which caps the index from above.
  So one series holds at most ``MAX_BUCKETS_PER_SIGN`` buckets per sign, plus zero,
  plus one extra piece per classic bound (next point), whatever is recorded.
- Each fine bucket also carries the classic Prometheus bucket (``le``) its values fall
  into, decided by an exact ``value <= bound`` test when the value is recorded. A log
  bucket that a classic bound cuts is thus two fine buckets, and the classic ``le``
  counts are sums of fine counts, exactly.

Quantiles are nearest-rank (PostgreSQL's ``percentile_disc``): the value at rank
``ceil(q * n)`` of the sorted observations. The fine bucket that holds that rank holds
that value, so the reported quantile is within ``RELATIVE_ACCURACY`` of it.

Field layout (stat part of a live hash field, see :mod:`fleettrace.keys`):
``d=p<i>/<le>`` positive bucket ``i``, ``d=n<i>/<le>`` negative, ``d=z/<le>`` zero;
``<le>`` is the classic bound as ``repr(float)`` or ``+Inf``.

Sums: ``HINCRBYFLOAT`` rounds to binary on every increment (a million increments of
0.1 do not make 100000.0). A sample's value is split into whole units and billionths
(:func:`sum_parts`), each summed as an integer (``HINCRBYFLOAT`` with whole-number
amounts: Redis adds in a long double, exact for integers up to 2**64 on x86-64, and
it cannot fail a batch with an overflow as ``HINCRBY`` would), and read back with one
correctly rounded division (:func:`exact_sum`).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, NamedTuple

from fleettrace.keys import STAT_FINE_PREFIX
from fleettrace.model import MAX_METRIC_VALUE

#: Promised bound of the relative error of every live quantile: 2 %.
PROMISED_RELATIVE_ERROR: Final = 0.02
#: What the mapping guarantees; below the promise so that float rounding at bucket
#: edges and in the harmonic midpoint cannot reach it.
RELATIVE_ACCURACY: Final = 0.019
GAMMA: Final = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA: Final = math.log(GAMMA)
#: Magnitudes below this collapse into the lowest bucket (1 ns in milliseconds).
MIN_MAGNITUDE: Final = 1e-9
MIN_INDEX: Final = math.ceil(math.log(MIN_MAGNITUDE) / _LOG_GAMMA)
MAX_INDEX: Final = math.ceil(math.log(MAX_METRIC_VALUE) / _LOG_GAMMA)
#: The most log buckets of one sign a series can hold (about 60 per factor of ten).
MAX_BUCKETS_PER_SIGN: Final = MAX_INDEX - MIN_INDEX + 1
#: Billionths in one unit: the resolution of exact sums.
SUM_SCALE: Final = 10**9

_INF_TEXT: Final = "+Inf"


def bucket_index(magnitude: float) -> int:
    """The log bucket of a positive magnitude, collapsed into [MIN_INDEX, MAX_INDEX]."""
    if magnitude < MIN_MAGNITUDE:
        return MIN_INDEX
    return min(max(math.ceil(math.log(magnitude) / _LOG_GAMMA), MIN_INDEX), MAX_INDEX)


def classic_bound(value: float, bounds: tuple[float, ...]) -> float:
    """The upper bound of the classic bucket ``value`` falls into (``inf`` past the last):
    the first bound with ``value <= bound``; ``bounds`` ascending."""
    position = bisect_left(bounds, value)
    return bounds[position] if position < len(bounds) else math.inf


@lru_cache(maxsize=64)
def _bound_texts(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """How each classic bound, then the overflow, is written in a fine bucket's name."""
    return (*(repr(float(bound)) for bound in bounds), _INF_TEXT)


def fine_stat(value: float, bounds: tuple[float, ...]) -> str:
    """The stat name of the fine bucket ``value`` is counted in (``bounds`` ascending)."""
    le = _bound_texts(bounds)[bisect_left(bounds, value)]
    if value > 0:
        return f"{STAT_FINE_PREFIX}p{bucket_index(value)}/{le}"
    if value < 0:
        return f"{STAT_FINE_PREFIX}n{bucket_index(-value)}/{le}"
    return f"{STAT_FINE_PREFIX}z/{le}"


def fine_stat_of(index: int | None, position: int, bounds: tuple[float, ...]) -> str:
    """:func:`fine_stat` of a value ``>= 0`` from its log bucket (:func:`bucket_index`;
    None for zero) and classic position (``bisect_left(bounds, value)``), so a writer
    counting many values keys them by these two and names each bucket once."""
    le = _bound_texts(bounds)[position]
    if index is None:
        return f"{STAT_FINE_PREFIX}z/{le}"
    return f"{STAT_FINE_PREFIX}p{index}/{le}"


class FineBucket(NamedTuple):
    """One populated fine bucket: which one (sign, log index, classic bound), and its
    count. A named tuple: a read makes one per populated bucket of every series."""

    sign: int  # -1, 0 or 1
    log_index: int
    le: float
    observations: int


#: (sign, sign * index, le): sorts fine buckets in ascending value order.
_Order = tuple[int, int, float]


@lru_cache(maxsize=16384)
def _order_of(stat: str) -> _Order | None:
    """Where a fine bucket's stat name sorts; None if the name is not one. Cached: the
    same bucket names recur in every label set of a key."""
    if not stat.startswith(STAT_FINE_PREFIX):
        return None
    body, _, le_text = stat[len(STAT_FINE_PREFIX) :].partition("/")
    try:
        le = math.inf if le_text == _INF_TEXT else float(le_text)
        if body == "z":
            return (0, 0, le)
        sign = {"p": 1, "n": -1}[body[:1]]
        return (sign, sign * int(body[1:]), le)
    except (KeyError, ValueError):
        return None


def parse_fine_stat(stat: str, count: str | int) -> FineBucket | None:
    """A fine bucket from its stat name and count; None if the name is not one."""
    order = _order_of(stat)
    if order is None:
        return None
    sign, signed_index, le = order
    return FineBucket(sign, signed_index * sign, le, int(count))


def _lower_classic(le: float, bounds: tuple[float, ...]) -> float:
    """The classic bound just below ``le`` (0 for the first bucket)."""
    below = [bound for bound in bounds if bound < le]
    return max(below) if below else 0.0


def estimate(bucket: FineBucket, bounds: tuple[float, ...]) -> float:
    """The value reported for a fine bucket: the harmonic midpoint of its interval,
    the log bucket narrowed to its classic interval when a classic bound cuts it."""
    return _estimate(bucket.sign, bucket.log_index, bucket.le, bounds)


@lru_cache(maxsize=16384)
def _estimate(sign: int, log_index: int, le: float, bounds: tuple[float, ...]) -> float:
    """:func:`estimate`, cached: the same buckets recur in every label set of a key, and
    a live read of 1,000 histogram series spent a third of its time here."""
    if sign == 0:
        return 0.0
    low = GAMMA ** (log_index - 1)
    high = GAMMA**log_index
    if sign > 0:
        # Narrowed only by a classic bound that cuts the log bucket: a bound at its
        # edge (a rounded log) or one the key no longer has says nothing more.
        lower = _lower_classic(le, bounds)
        if low < lower < high:
            low = lower
        if low < le < high:
            high = le
    midpoint = 2 * low * high / (low + high)
    return midpoint * sign


_new_bucket = tuple.__new__  # a FineBucket without the Python-level __new__ of NamedTuple


@dataclass(frozen=True, slots=True)
class Sketch:
    """The populated fine buckets of one series, ascending, and what they tell.

    ``fields`` is how many stats were fine buckets (a reader learns from it whether a
    series holds anything else worth looking for)."""

    buckets: tuple[FineBucket, ...]
    bounds: tuple[float, ...]
    total: int = 0
    fields: int = 0

    @classmethod
    def from_stats(cls, stats: Mapping[str, str], bounds: tuple[float, ...]) -> Sketch:
        """The sketch in a series' stats (stat name -> count); other stats, malformed
        names and counts that are not positive integers are ignored."""
        merged: dict[_Order, int] = {}
        fields = 0
        for stat, amount in stats.items():
            order = _order_of(stat)
            if order is None:
                continue
            fields += 1
            try:
                count = int(amount)
            except ValueError:
                continue
            if count > 0:
                merged[order] = merged.get(order, 0) + count
        buckets = tuple(
            _new_bucket(FineBucket, (order[0], order[1] * order[0], order[2], merged[order]))
            for order in sorted(merged)
        )
        return cls(buckets, bounds, sum(merged.values()), fields)

    def quantile(self, q: float) -> float | None:
        """The nearest-rank q-quantile (as ``percentile_disc``); None when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        """Nearest-rank quantiles for ascending ``qs`` in one walk over the buckets."""
        if self.total == 0:
            return [None] * len(qs)
        ranks = [max(1, math.ceil(q * self.total)) for q in qs]
        found: list[float | None] = []
        cumulative = 0
        buckets = iter(self.buckets)
        bucket = None
        for rank in ranks:
            while cumulative < rank:
                bucket = next(buckets)
                cumulative += bucket.observations
            assert bucket is not None  # rank >= 1, so the loop ran
            found.append(estimate(bucket, self.bounds))
        return found

    def classic(self) -> dict[float, int]:
        """Observations per classic bucket (not cumulative), keyed by upper bound."""
        counts: dict[float, int] = {}
        for bucket in self.buckets:
            counts[bucket.le] = counts.get(bucket.le, 0) + bucket.observations
        return counts


def sum_parts(value: float) -> tuple[int, int]:
    """``value`` as (whole units, billionths), both integers, billionths in [0, 1e9)."""
    whole = math.floor(value)
    nanos = round((value - whole) * SUM_SCALE)
    if nanos == SUM_SCALE:
        whole, nanos = whole + 1, 0
    return whole, nanos


def exact_sum(whole: int, nanos: int) -> float:
    """The float nearest to ``whole + nanos / 1e9`` (one correctly rounded division)."""
    return (whole * SUM_SCALE + nanos) / SUM_SCALE


def nearest_rank(values: Iterable[float], q: float) -> float:
    """The exact nearest-rank q-quantile of ``values`` (PostgreSQL ``percentile_disc``)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]
