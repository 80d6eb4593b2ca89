"""Percentiles and rates, computed one way for every section."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (``nan`` when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


def latency_summary_us(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50, p99, mean and max in microseconds of per-call timings in nanoseconds."""
    ordered = sorted(samples_ns)
    count = len(ordered)
    return {
        "calls": count,
        "p50_us": round(percentile(ordered, 0.50) / 1000, 3),
        "p99_us": round(percentile(ordered, 0.99) / 1000, 3),
        "mean_us": round(sum(ordered) / count / 1000, 3) if count else math.nan,
        "max_us": round(ordered[-1] / 1000, 3) if count else math.nan,
    }


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else math.nan


def slope_per_s(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (time s, value) points: how fast a backlog grows."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var_t
