"""What the Overview and the Performance page read of the stored rows beyond cost: the
calls of today (from the reader's start of the day), the last hour's latency per model,
and the durations of the metric samples, each equal to the same SQL over the rows; and
the costliest plans' budgets beside their live cost. Over HTTP against a dashboard on
a free port, with the fleets of tests/dashboard_helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
import redis

from fleettrace.keys import Keys
from fleettrace.plans import read_plan
from fleettrace_worker.serve.dashboard.samples import SAMPLE_KEYS
from tests.dashboard_helpers import (
    SAMPLED,
    TREE_BUDGET,
    TREE_OTHER,
    TREE_ROOT,
    dashboard,
    fill_fleet,
    fill_plan_tree,
    get_json,
    page_cells,
    request,
    rows,
)
from tests.emitting import make_emitter
from tests.factories import numbered_trace
from tests.worker_helpers import drain, migrated


@pytest.fixture
def fleet(redis_url: str, keys: Keys, database_url: str) -> str:
    return fill_fleet(redis_url, keys, database_url)


def test_today_starts_where_the_reader_says_and_equals_the_sql(
    fleet: str, redis_url: str, keys: Keys
) -> None:
    # A start of the day an hour after the oldest call: "today" holds only the later ones.
    [(oldest, newest)] = rows(fleet, "SELECT min(started_at), max(started_at) FROM llm_traces")
    start = min(oldest + (newest - oldest) / 2, datetime.now(UTC) - timedelta(seconds=1))
    day_start = int(start.timestamp())
    since = datetime.fromtimestamp(day_start, UTC)
    [(calls, cost, priced, errors, retried)] = rows(
        fleet,
        "SELECT count(*), coalesce(sum(cost_usd), 0), count(cost_usd), count(error), "
        "count(*) FILTER (WHERE retry_count > 0) FROM llm_traces "
        "WHERE namespace = %s AND started_at >= %s",
        keys.namespace,
        since,
    )
    with dashboard(redis_url, keys, fleet) as base:
        answer = get_json(f"{base}/api/activity?day_start={day_start}")[1]
        assert answer["next_cursor"] is None
        today = {item["window"]: item for item in answer["items"]}["today"]
        assert today["from"] == since.isoformat()
        assert (today["calls"], today["unpriced_calls"]) == (calls, calls - priced)
        assert today["cost_usd"] == pytest.approx(float(cost))
        assert today["error_rate"] == (errors / calls if calls else None)
        assert today["retry_rate"] == (retried / calls if calls else None)

        page = request(f"{base}/?day_start={day_start}")[2].decode()
        [row] = [r for r in page_cells(page, "activity") if r[0].startswith("today")]
        assert row[0] == f"today (since {since.isoformat()}, your time zone)"
        assert row[1] == str(calls) and row[4] == str(calls - priced)
        # Without the page's script: from UTC midnight, and the page says so.
        plain = request(f"{base}/")[2].decode()
        assert any(r[0] == "today (since 00:00 UTC)" for r in page_cells(plain, "activity"))
        utc = get_json(f"{base}/api/activity")[1]["items"][1]
        assert utc["from"] == datetime.now(UTC).strftime("%Y-%m-%dT00:00:00+00:00")

        old = int((datetime.now(UTC) - timedelta(days=3)).timestamp())
        future = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
        for bad, said in (
            ("yesterday", "day_start must be a Unix time in whole seconds"),
            ("-5", "day_start must be a Unix time in whole seconds"),
            (str(old), "day_start must lie within the last 50 hours"),
            (str(future), "day_start must lie within the last 50 hours"),
        ):
            status, error = get_json(f"{base}/api/activity?day_start={bad}")
            assert (status, error["error"].split(",")[0]) == (400, said)
            status, _, body = request(f"{base}/?day_start={bad}")
            assert status == 400 and said in unescape(body.decode())


def test_the_overview_latency_and_the_sample_durations_equal_the_sql(
    fleet: str, redis_url: str, keys: Keys
) -> None:
    latency = {
        model: [str(calls), *(f"{p:.6g}" if p % 1 else str(int(p)) for p in (p50, p95))]
        for model, calls, p50, p95 in rows(
            fleet,
            "SELECT model, count(*), "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM llm_traces "
            "WHERE namespace = %s AND started_at >= now() - interval '1 hour' GROUP BY model",
            keys.namespace,
        )
    }
    assert len(latency) == 3  # the refused call is not stored
    samples = {
        key: (count, p50, p95, p99)
        for key, count, p50, p95, p99 in rows(
            fleet,
            "SELECT key, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY value), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY value), "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY value) FROM metric_samples "
            "WHERE namespace = %s AND key = ANY(%s) GROUP BY key",
            keys.namespace,
            list(SAMPLE_KEYS),
        )
    }
    assert {key: n for key, (n, *_) in samples.items()} == {
        key.value: len(values) for key, _, values in SAMPLED
    }
    with dashboard(redis_url, keys, fleet) as base:
        page = request(f"{base}/")[2].decode()
        assert "LLM latency by model (last hour, stored calls)" in page
        shown = {row[0]: row[1:] for row in page_cells(page, "overview-latency")}
        assert shown == latency

        answer = get_json(f"{base}/api/performance/samples?range=1h")[1]
        assert answer["next_cursor"] is None and answer["step_s"] == 60
        per_key: dict[str, int] = {}
        for item in answer["items"]:
            assert set(item) == {"t", "key", "samples", "p50_ms", "p95_ms", "p99_ms"}
            per_key[item["key"]] = per_key.get(item["key"], 0) + item["samples"]
        assert per_key == {key: n for key, (n, *_) in samples.items()}
        [(first,)] = rows(
            fleet,
            "SELECT min(extract(epoch FROM date_bin('60 s', observed_at, "
            "'2000-01-01T00:00:00Z'))::bigint) FROM metric_samples WHERE namespace = %s",
            keys.namespace,
        )
        assert answer["items"][0]["t"] == first

        performance = request(f"{base}/performance?range=1h")[2].decode()
        table = page_cells(performance, "samples-table")
        assert [row[0] for row in table] == list(SAMPLE_KEYS)
        for key, count, *percentiles in table:
            expected = samples[key]
            assert int(count) == expected[0]
            assert [float(p) for p in percentiles] == pytest.approx(expected[1:], rel=1e-5)
        assert 'id="samples-chart" data-api="/api/performance/samples?' in performance
        # Another range holds none of them: the table says so.
        old = (datetime.now(UTC) - timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%S")
        empty = get_json(f"{base}/api/performance/samples?from={old}&to={old[:-2]}59")[1]
        assert empty["items"] == []
        assert get_json(f"{base}/api/performance/samples?range=9y")[0] == 400


def test_the_costliest_plans_show_their_budget_and_the_share_used(
    redis_url: str, keys: Keys, database_url: str, redis_client: redis.Redis
) -> None:
    db = migrated(database_url)
    fill_plan_tree(redis_url, keys, db)
    trip = read_plan(redis_client, keys, TREE_ROOT)
    assert trip is not None and trip.budget_usd == TREE_BUDGET and trip.cost_usd > 0
    with dashboard(redis_url, keys, db) as base:
        top = {p["plan_id"]: p for p in get_json(f"{base}/api/overview")[1]["top_plans"]}
        assert top[TREE_ROOT]["budget_usd"] == TREE_BUDGET
        assert top[TREE_ROOT]["share_used"] == pytest.approx(trip.cost_usd / TREE_BUDGET)
        assert (top[TREE_OTHER]["budget_usd"], top[TREE_OTHER]["share_used"]) == (None, None)
        page = request(f"{base}/")[2].decode()
        assert '<th scope="col">budget (USD)</th><th scope="col">share used</th>' in page
        shown = {row[0]: row[1:4] for row in page_cells(page, "top-plans")}
        assert shown[TREE_ROOT] == [
            f"{trip.cost_usd:.6f}",
            f"{TREE_BUDGET:.6f}",
            f"{trip.cost_usd / TREE_BUDGET * 100:.1f} %",
        ]
        assert shown[TREE_OTHER][1:] == ["", ""]  # no budget: nothing shown


def test_a_model_whose_calls_all_failed_reads_no_throughput_never_a_500(
    redis_url: str, keys: Keys, database_url: str
) -> None:
    # One model answered with tokens; another only failed (no completion tokens), as
    # the demo's failing provider does; a third's failed call takes time without tokens.
    calls = [
        numbered_trace(0, model="answers", completion_tokens=30, latency_ms=500.0),
        numbered_trace(1, model="answers", completion_tokens=10, latency_ms=1500.0),
        numbered_trace(2, model="fails", completion_tokens=None, latency_ms=80.0, error="500"),
        numbered_trace(3, model="mixed", completion_tokens=40, latency_ms=2000.0),
        numbered_trace(4, model="mixed", completion_tokens=None, latency_ms=6000.0, error="429"),
    ]
    db = migrated(database_url)
    emitter = make_emitter(redis_url, keys)
    for call in calls:
        emitter.record(call)
    assert emitter.flush(30)
    emitter.close()
    drain(redis_url, keys, db)
    with dashboard(redis_url, keys, db) as base:
        status, _, page = request(f"{base}/")
        assert status == 200
        assert [row[0] for row in page_cells(page.decode(), "overview-latency")] == [
            "answers",
            "fails",
            "mixed",
        ]
        status, answer = get_json(f"{base}/api/performance?range=1h")
        assert status == 200
        # Tokens per second of the calls that produced tokens; none for a model without.
        per_s = {item["key"]: item["completion_tokens_per_s"] for item in answer["items"]}
        assert per_s == {"answers": 20.0, "fails": None, "mixed": 20.0}
        assert request(f"{base}/performance?range=1h")[0] == 200
