"""The Overview's calls and latency per model from the live counters (HTTP, no
browser): equal to the live series (``read_live``) and to the SQL sums of the same
calls, with the worker's history at the windows' starts
(worker/fleettrace_worker/serve/dashboard/live_activity.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from fleettrace.keys import Keys
from fleettrace.live import read_live
from fleettrace.metrics import MetricKey
from fleettrace_worker.serve.dashboard.pages import number
from fleettrace_worker.serve.history import HISTORY_INTERVAL_S, History, Totals
from tests.dashboard_helpers import (
    CALLS,
    POISON,
    check_live_latency,
    check_live_rows,
    dashboard,
    fill_fleet,
    get_json,
    live_call_totals,
    page_cells,
    request,
    rows,
)


def test_the_overview_counts_the_windows_and_models_from_the_live_counters(
    redis_url: str, keys: Keys, database_url: str, redis_client: redis.Redis
) -> None:
    now = time.time()
    # A worker ran an hour ago, before any call: the history's sample then is all zero.
    assert History(redis_client, keys).record(now - 3600 - 30)
    db = fill_fleet(redis_url, keys, database_url)
    live = Totals.of(read_live(redis_client, keys))
    stored = live_call_totals(db, keys.namespace)
    assert (live.calls, live.priced_calls, live.errors, live.retried) == (
        stored.calls,
        stored.priced_calls,
        stored.errors,
        stored.retried,
    )
    assert live.cost_usd == pytest.approx(stored.cost_usd, rel=1e-9)
    assert live.calls == CALLS + 1
    baseline = (now - 3630) // HISTORY_INTERVAL_S * HISTORY_INTERVAL_S
    day_start = int(now - 1800)
    with dashboard(redis_url, keys, db) as base:
        status, answer = get_json(f"{base}/api/live/activity?day_start={day_start}")
        asked_at = time.time()
        html = request(f"{base}/?day_start={day_start}")[2].decode()
    assert status == 200 and answer["next_cursor"] is None
    windows = {item["window"]: item for item in answer["items"]}
    assert list(windows) == ["1h", "today", "24h"]
    # The hour reaches back to its sample; today and 24h go further than the history,
    # so they count from its oldest sample (the same one) and say so.
    assert [windows[w]["complete"] for w in windows] == [True, False, False]
    assert windows["today"]["start"] == datetime.fromtimestamp(day_start, UTC).isoformat()
    for item in windows.values():
        assert item["from"] == datetime.fromtimestamp(baseline, UTC).isoformat()
        assert (item["calls"], item["unpriced_calls"]) == (
            stored.calls,
            stored.calls - stored.priced_calls,
        )
        assert item["cost_usd"] == pytest.approx(stored.cost_usd, rel=1e-9)
        assert item["error_rate"] == stored.errors / stored.calls
        assert item["retry_rate"] == stored.retried / stored.calls
        minutes = (asked_at - baseline) / 60
        assert item["calls_per_minute"] == pytest.approx(stored.calls / minutes, rel=0.01)

    # Per model: the live calls, cost and sketch percentiles equal the stored rows'
    # count, sum and exact nearest-rank percentiles (within the sketch's 2 %).
    models = {(m["provider"], m["model"]): m for m in answer["models"]}
    expected = rows(
        db,
        "SELECT provider, model, count(*), count(cost_usd), sum(cost_usd), "
        "percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms), "
        "percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms), "
        "percentile_disc(0.99) WITHIN GROUP (ORDER BY latency_ms) "
        "FROM llm_traces WHERE namespace = %s GROUP BY 1, 2",
        keys.namespace,
    )
    assert set(models) == {(p, m) for p, m, *_ in expected} | {(POISON.provider, "poison")}
    for provider, model, calls, priced, cost, p50, p95, p99 in expected:
        found = models[(provider, model)]
        assert (found["calls"], found["priced_calls"]) == (calls, priced)
        assert found["unpriced_calls"] == calls - priced
        if cost is None:
            assert found["cost_usd"] is None  # unpriced, never 0
        else:
            assert found["cost_usd"] == pytest.approx(float(cost), rel=1e-9)
        for name, exact in (("p50_ms", p50), ("p95_ms", p95), ("p99_ms", p99)):
            assert found[name] == pytest.approx(exact, rel=0.02)
    assert models[(POISON.provider, "poison")]["cost_usd"] == 0.25
    by_labels = {
        tuple(s.labels): s for s in read_live(redis_client, keys, MetricKey.LLM_LATENCY_MS)
    }
    for (provider, model), found in models.items():
        series = by_labels[(("provider", provider), ("model", model))]
        assert (found["calls"], found["p95_ms"]) == (series.count, series.p95)

    # The page shows the same figures (no script here: "today" is labelled by its start).
    shown = page_cells(html, "live-activity")
    since = datetime.fromtimestamp(baseline, UTC).isoformat()
    assert [row[0] for row in shown] == [
        "last 1h",
        f"today (since {windows['today']['start']}, your time zone): counted since {since}",
        f"last 24h: counted since {since}",
    ]
    check_live_rows(shown, db, keys, redis_client)
    check_live_latency(page_cells(html, "live-latency"), db)
    assert {(r[0], r[1]): r[2:] for r in page_cells(html, "live-latency")} == {
        key: _latency_row(m) for key, m in models.items()
    }


def _latency_row(found: dict[str, Any]) -> list[str]:
    cost = found["cost_usd"]
    return [
        str(found["calls"]),
        number(found["p50_ms"]),
        number(found["p95_ms"]),
        number(found["p99_ms"]),
        "unpriced" if cost is None else f"{cost:.6f}",
        str(found["unpriced_calls"]),
    ]


def test_without_history_the_windows_say_so_and_a_bad_day_start_is_refused(
    redis_url: str, keys: Keys, database_url: str, redis_client: redis.Redis
) -> None:
    db = fill_fleet(redis_url, keys, database_url)
    redis_client.delete(keys.aggregate_history)  # no worker ever kept one
    with dashboard(redis_url, keys, db) as base:
        status, answer = get_json(f"{base}/api/live/activity")
        html = request(f"{base}/")[2].decode()
        bad = get_json(f"{base}/api/live/activity?day_start=yesterday")
        unknown = get_json(f"{base}/api/live/activity?namespace={keys.namespace}-none")[0]
        not_a_name = get_json(f"{base}/api/live/activity?namespace=a%20b")[0]
        own = get_json(f"{base}/api/live/activity?namespace={keys.namespace}")[1]
    assert status == 200
    for item in answer["items"]:
        assert (item["from"], item["complete"], item["calls"], item["cost_usd"]) == (
            None,
            False,
            None,
            None,
        )
    assert answer["models"]  # the latency per model needs no history
    assert own["models"] == answer["models"]  # ?namespace= reads that namespace's keys
    assert (unknown, not_a_name) == (404, 400)
    labels = [row[0] for row in page_cells(html, "live-activity")]
    assert (
        labels[1]
        == "today (since 00:00 UTC): no history yet (the worker keeps one sample a minute)"
    )
    assert all(row[1:] == [""] * 6 for row in page_cells(html, "live-activity"))
    assert bad == (
        400,
        {"error": "day_start must be a Unix time in whole seconds, got 'yesterday'"},
    )
