"""The Overview's calls from the live counters: per window (the last hour, today, the
last 24 hours) the calls, calls per minute, priced spend, unpriced calls and the
shares that failed and were retried, from the fleet's totals now less the worker's
history sample at the window's start (:mod:`fleettrace_worker.serve.history`); and
per provider and model the calls, the latency p50/p95/p99 of the ``llm.latency_ms``
sketch (every call counted so far, within 2 %) and the priced spend of
``llm.cost_usd``. Everything comes from Redis; PostgreSQL is not read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from fleettrace.keys import Keys
from fleettrace.live import LiveSeries, read_live
from fleettrace.metrics import MetricKey
from fleettrace_worker.serve.history import Totals, windows


def live_activity(
    client: redis.Redis, keys: Keys, day_start: datetime, now: datetime | None = None
) -> dict[str, Any]:
    """``items``: the windows (as ``/api/activity``'s, plus ``start``, the start
    asked, and ``complete``); ``models``: the live figures per provider and model."""
    now = now or datetime.now(UTC)
    series = read_live(client, keys)
    starts = [
        ("1h", (now - timedelta(hours=1)).timestamp()),
        ("today", day_start.timestamp()),
        ("24h", (now - timedelta(days=1)).timestamp()),
    ]
    found = windows(client, keys, Totals.of(series), starts)
    moment = now.timestamp()
    return {
        "items": [window.item(moment) for window in found],
        "next_cursor": None,
        "models": model_items(series),
    }


def model_items(series: list[LiveSeries]) -> list[dict[str, Any]]:
    """Per provider and model (in that order): calls, latency percentiles (ms), priced
    calls, their cost (null when none was priced) and the unpriced calls."""
    costs = {s.labels: s for s in series if s.key is MetricKey.LLM_COST_USD}
    out = []
    for one in series:
        if one.key is not MetricKey.LLM_LATENCY_MS:
            continue
        labels = dict(one.labels)
        cost = costs.get(one.labels)
        priced = 0 if cost is None else cost.count
        out.append(
            {
                "provider": labels.get("provider"),
                "model": labels.get("model"),
                "calls": one.count,
                "p50_ms": one.p50,
                "p95_ms": one.p95,
                "p99_ms": one.p99,
                "priced_calls": priced,
                "cost_usd": None if cost is None else cost.sum,
                "unpriced_calls": max(one.count - priced, 0),
            }
        )
    return out
