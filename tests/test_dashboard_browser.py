"""The dashboard's pages in a real browser: Debian's chromium driven by Playwright.

Playwright's own browser download does not work offline, so the tests use
``/usr/bin/chromium`` (``.ci/run`` installs it with apt when missing) and skip, saying
so, without it. Each page is loaded against a fleet filled through the real pipeline;
no console error, page error or failed request may occur; the numbers shown must be
the SQL sums and the live counters. Screenshots go to ``artifacts/screenshots/``
(docs/dashboard.md; git-ignored, kept by CI as artefacts).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest

from fleettrace.live import read_live
from fleettrace.plans import read_plan, total_cost_usd
from fleettrace_worker.serve.dashboard.pages import number
from fleettrace_worker.serve.dashboard.samples import SAMPLE_KEYS
from fleettrace_worker.serve.history import History
from tests.browsing import CHROMIUM, LOCALE, SCREENSHOTS, ZONE, Watched, sync_api
from tests.dashboard_helpers import (
    CALLS,
    HOSTILE,
    HOSTILE_PLAN,
    TREE_BUDGET,
    TREE_CHILD,
    TREE_OTHER,
    TREE_ROOT,
    check_live_latency,
    check_live_rows,
    dashboard,
    drop_poison_rule,
    fill_fleet,
    fill_plan_tree,
    rows,
)
from tests.worker_helpers import drain, migrated, trace_rows

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; "
        ".ci/run installs it); Playwright's own browser download is not used",
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser) -> Iterator[Watched]:
    context = browser.new_context(
        timezone_id=ZONE, locale=LOCALE, viewport={"width": 1280, "height": 900}
    )
    yield Watched(context.new_page())
    context.close()


def local_midnight(moment: datetime) -> datetime:
    """The start of ``moment``'s day in its own zone."""
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def test_each_page_shows_the_fleet_and_a_dead_letter_goes_home(
    page, redis_url, keys, database_url, redis_client
) -> None:
    # A worker ran an hour ago, before any call: the history's sample then is all zero.
    History(redis_client, keys).record(time.time() - 3630)
    db = fill_fleet(redis_url, keys, database_url)
    with dashboard(redis_url, keys, db) as base:
        # Overview: the live counters, every producer summed; refreshed in place.
        # The page's figures are read from its first load on: "today" per minute
        # depends on that moment, at or after this one.
        before = datetime.now(ZoneInfo(ZONE))
        page.open(f"{base}/", "overview")
        spend = page.page.text_content("#spend")
        assert spend == f"{total_cost_usd(redis_client, keys):.6f}"
        shown = {(row[0], row[1]): row for row in page.cells("live-series")}
        for series in read_live(redis_client, keys):
            labels = ", ".join(f"{k}={v}" for k, v in series.labels)
            row = shown[(series.key.value, labels)]
            assert int(row[3]) == series.count
            assert float(row[4]) == pytest.approx(series.sum, rel=1e-6)
        tool = shown[("tool.invocation_duration_ms", f"tool={HOSTILE}")]
        assert (tool[2], tool[3], tool[4]) == ("ms", "3", "131")
        assert ["persist", "1"] in page.cells("dead-letters")
        # Each of the costliest plans links to its own page, in the namespace read.
        links = page.page.eval_on_selector_all(
            "#top-plans a", "anchors => anchors.map(a => [a.textContent, a.getAttribute('href')])"
        )
        assert links, "no plan links on the overview"
        for plan_id, href in links:
            assert href == f"/plans/{quote(plan_id, safe='')}?namespace={keys.namespace}"
        [(calls, cost, priced)] = rows(
            db, "SELECT count(*), coalesce(sum(cost_usd), 0), count(cost_usd) FROM llm_traces"
        )
        recent = {row[0]: row for row in page.cells("activity")}
        assert recent["last 1h"][1:5] == [
            str(calls),
            f"{calls / 60:.2f}",
            f"{cost:.6f}",
            str(calls - priced),
        ]
        page.page.wait_for_selector("#refreshed:has-text('refreshed')", timeout=15_000)
        page.page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)
        # Refreshed, "today" starts at midnight in the browser's zone, shown in it (the
        # midnight of the moment the refresh read, which may be a new day's).
        since = page.page.get_attribute("#activity time", "datetime")
        after = datetime.now(ZoneInfo(ZONE))
        assert since is not None
        midnight = datetime.fromisoformat(since).astimezone(ZoneInfo(ZONE))
        assert midnight in {local_midnight(before), local_midnight(after)}
        [(today_calls, today_cost, today_priced)] = rows(
            db,
            "SELECT count(*), coalesce(sum(cost_usd), 0), count(cost_usd) FROM llm_traces "
            "WHERE started_at >= %s",
            midnight,
        )
        [today] = [row for row in page.cells("activity") if row[0].startswith("today")]
        assert today == [
            f"today (since {midnight:%d/%m/%Y, %H:%M:%S}, your time zone)",
            str(today_calls),
            today[2],  # calls per minute since midnight: depends on the moment read
            f"{today_cost:.6f}",
            str(today_calls - today_priced),
            today[5],
            today[6],
        ]
        # Over the minutes since midnight, at least one, at the moment the refresh read.
        fastest, slowest = (
            today_calls / max((moment - midnight).total_seconds() / 60, 1.0)
            for moment in (before, datetime.now(ZoneInfo(ZONE)))
        )
        assert slowest - 0.005 <= float(today[2]) <= fastest + 0.005
        # The last hour's latency per model: the SQL percentiles of the stored calls.
        assert {row[0]: row[1:] for row in page.cells("overview-latency")} == {
            model: [str(n), number(p50), number(p95)]
            for model, n, p50, p95 in rows(
                db,
                "SELECT model, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM llm_traces "
                "WHERE started_at >= now() - interval '1 hour' GROUP BY model",
            )
        }

        # The calls from the live counters: the live totals and the SQL sums; latency per
        # model within 2 % of the SQL's (every figure counted from the hour's sample).
        live_rows = page.cells("live-activity")
        stored = check_live_rows(live_rows, db, keys, redis_client)
        labels = [row[0] for row in live_rows]
        assert labels[0] == "last 1h" and labels[2].startswith("last 24h: counted since ")
        stamps = page.page.eval_on_selector_all(
            "#live-activity time", "els => els.map(e => e.getAttribute('datetime'))"
        )
        assert stamps[0] == midnight.astimezone(UTC).isoformat()
        assert float(live_rows[0][2]) == pytest.approx(
            stored.calls
            / ((datetime.now(UTC) - datetime.fromisoformat(stamps[-1])).total_seconds() / 60),
            abs=0.02,
        )
        check_live_latency(page.cells("live-latency"), db)

        # Cost: the table is the SQL sums; unpriced calls are counted, not priced at zero.
        page.open(f"{base}/cost?by=model&range=24h", "cost")
        expected = {
            # A model nothing of which was priced reads "unpriced", never 0.
            model: (str(calls), str(calls - priced), "unpriced" if cost is None else f"{cost:.6f}")
            for model, calls, priced, cost in rows(
                db,
                "SELECT model, count(*), count(cost_usd), sum(cost_usd) "
                "FROM llm_traces GROUP BY model",
            )
        }
        got = {row[0]: (row[1], row[3], row[4]) for row in page.cells("cost-table")}
        assert got == expected
        assert got["house-llm"][1] == str(CALLS // 3)
        [(total,)] = rows(db, "SELECT sum(cost_usd) FROM llm_traces")
        assert page.page.text_content("#total-cost") == f"{total:.6f}"
        page.page.wait_for_selector("#cost-chart .uplot canvas")
        with page.page.expect_download() as download:
            page.page.click("#csv")
        lines = Path(download.value.path()).read_text().splitlines()
        assert lines[0].startswith("model,calls,priced_calls,unpriced_calls,cost_usd")
        cost_cells = {line.split(",")[0]: line.split(",")[4] for line in lines[1:]}
        assert {k: f"{float(v):.6f}" if v else "unpriced" for k, v in cost_cells.items()} == {
            model: figures[2] for model, figures in expected.items()
        }
        axes = page.page.evaluate("window.fleettraceCharts[0].axes.map(a => a.label)")
        assert axes[1] == "cost (USD)"
        assert axes[0].startswith("time (your time zone)")
        legend = page.page.eval_on_selector_all(
            "#cost-chart .u-legend .u-label", "els => els.map(e => e.textContent)"
        )
        assert sorted(legend[1:]) == sorted(expected)

        # Performance: latency percentiles per model are the SQL ones; live durations.
        page.open(f"{base}/performance?range=24h", "performance")
        latency = {row[0]: (row[1], row[2], row[3]) for row in page.cells("latency-table")}
        assert latency == {
            model: (str(calls), number(p50), number(p95))
            for model, calls, p50, p95 in rows(
                db,
                "SELECT model, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) "
                "FROM llm_traces GROUP BY model",
            )
        }
        assert {row[0]: row[5] for row in page.cells("latency-table")} == {
            model: number(ttft)
            for model, ttft in rows(
                db,
                "SELECT model, percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) "
                "FROM llm_traces GROUP BY model",
            )
        }
        durations = {(row[0], row[1]): row for row in page.cells("live-durations")}
        assert durations[("tool.invocation_duration_ms", f"tool={HOSTILE}")][2:4] == ["ms", "3"]
        page.page.wait_for_selector("#latency-chart .uplot canvas")
        axes = page.page.evaluate(
            "window.fleettraceCharts.find(c => c.root.parentElement.id === 'latency-chart')"
            ".axes.map(a => a.label)"
        )
        assert axes[1] == "p95 latency (ms)"
        # No call of this fleet reported a time to first token: the chart says so.
        assert rows(db, "SELECT count(ttft_ms) FROM llm_traces") == [(0,)]
        page.page.wait_for_selector("#ttft-chart:has-text('reported it')")
        assert page.page.text_content("#ttft-chart") == "no calls in this range reported it"
        # The durations of the metric samples: the SQL percentiles, and their chart.
        assert {row[0]: row[1:] for row in page.cells("samples-table")} == {
            key: [str(n), number(p50), number(p95), number(p99)]
            for key, n, p50, p95, p99 in rows(
                db,
                "SELECT key, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY value), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY value), "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY value) FROM metric_samples "
                "WHERE key = ANY(%s) GROUP BY key",
                list(SAMPLE_KEYS),
            )
        }
        page.page.wait_for_selector("#samples-chart .uplot canvas")
        chart = page.page.evaluate(
            "(() => { const c = window.fleettraceCharts.find("
            "c => c.root.parentElement.id === 'samples-chart');"
            " return [c.axes[1].label, c.series.slice(1).map(s => s.label)]; })()"
        )
        assert chart == ["p95 duration, metric samples (ms)", list(SAMPLE_KEYS)]

        # Plans: every plan with its SQL cost; an agent's markup shown as text.
        page.open(f"{base}/plans", "plans")
        plans = {row[0]: row[3] for row in page.cells("plans-table")}
        expected_plans = rows(db, "SELECT plan_id, sum(cost_usd) FROM llm_traces GROUP BY plan_id")
        assert plans == {
            plan: "unpriced" if cost is None else f"{cost:.6f}" for plan, cost in expected_plans
        }
        assert HOSTILE_PLAN in plans
        assert page.page.locator("b", has_text="bold").count() == 0

        # Dead letters: the refused call, its time in the browser's zone; replayed from
        # the page (after the confirmation), it is stored by the next worker pass.
        page.open(f"{base}/dlq", "dead-letters")
        [letter] = page.cells("dlq-persist")
        assert "no_poison" in letter[5]
        moment = page.page.get_attribute("#dlq-persist time", "datetime")
        local = datetime.fromisoformat(moment).astimezone(ZoneInfo(ZONE))
        assert letter[2] == local.strftime("%d/%m/%Y, %H:%M:%S")
        drop_poison_rule(db)
        page.page.check("#dlq-persist input[name=id]")
        page.page.click("#replay-persist button")
        page.page.wait_for_selector("#replay-summary, .error")
        assert page.page.query_selector(".error") is None, page.page.text_content(".error")
        page.page.screenshot(path=str(SCREENSHOTS / "replayed.png"), full_page=True)
        assert page.page.text_content("#replay-summary") == "replayed 1, refused 0, not found 0"
        assert page.dialogs == ["Replay 1 dead letter(s) onto their streams?"]
        assert redis_client.xlen(keys.dead_letters("persist")) == 0
    assert page.problems == []
    drain(redis_url, keys, db)
    assert trace_rows(db) == CALLS + 1


def _tree_rows(page: Watched) -> list[dict[str, Any]]:
    return list(
        page.page.eval_on_selector_all(
            "#plan-tree tbody tr",
            """rows => rows.map(r => ({kind: r.dataset.kind, name: r.dataset.name,
                failed: r.classList.contains('failed'), bar: !!r.querySelector('svg.bar rect'),
                cells: [...r.cells].map(c => c.textContent.trim())}))""",
        )
    )


def test_a_plan_is_found_its_tree_read_and_a_call_opened(
    page, redis_url, keys, database_url, redis_client
):
    """The Overview's plan budgets; then Plans search -> one plan's tree and waterfall
    -> one call's details, by clicks; every figure shown is the SQL sum of the rows it
    stands for."""
    db = migrated(database_url)
    fill_plan_tree(redis_url, keys, db)
    with dashboard(redis_url, keys, db) as base:
        # The costliest plans: live cost (the SQL sum of the plan's own priced calls),
        # the budget the plan was given and the share of it used; none without one.
        page.open(f"{base}/", "overview-budgets")
        shown = {row[0]: row[1:4] for row in page.cells("top-plans")}
        [(trip_cost,)] = rows(
            db, "SELECT sum(cost_usd) FROM llm_traces WHERE plan_id = %s", TREE_ROOT
        )
        trip = read_plan(redis_client, keys, TREE_ROOT)
        assert trip is not None and trip.cost_usd == pytest.approx(float(trip_cost))
        assert shown[TREE_ROOT] == [
            f"{trip_cost:.6f}",
            f"{TREE_BUDGET:.6f}",
            f"{float(trip_cost) / TREE_BUDGET * 100:.1f} %",
        ]
        assert shown[TREE_OTHER][1:] == ["", ""]
        page.open(f"{base}/plans?tag=prod&status=any", "plans-search")
        listed = {row[0]: row for row in page.cells("plans-table")}
        assert set(listed) == {
            plan for (plan,) in rows(db, "SELECT plan_id FROM llm_traces WHERE 'prod' = ANY(tags)")
        }
        page.page.click(f"#plans-table a:text-is('{TREE_ROOT}')")
        page.page.wait_for_selector("#plan-tree")
        page.page.wait_for_load_state("networkidle")
        page.page.screenshot(path=str(SCREENSHOTS / "plan-tree.png"), full_page=True)

        # Each plan row is its subtree's rows summed, each call row its own row.
        head = ["calls", "unpriced calls", "prompt tokens", "completion tokens", "cost (USD)"]
        nodes = _tree_rows(page)
        assert [(n["kind"], n["name"]) for n in nodes[:2]] == [
            ("plan", TREE_ROOT),
            ("plan", TREE_CHILD),
        ]
        subtree = {TREE_ROOT: [TREE_ROOT, TREE_CHILD], TREE_CHILD: [TREE_CHILD]}
        for node in nodes:
            shown = dict(zip(head, node["cells"][3:8], strict=True))
            if node["kind"] == "plan":
                [(calls, priced, p, c, cost)] = rows(
                    db,
                    "SELECT count(*), count(cost_usd), sum(prompt_tokens), "
                    "sum(completion_tokens), sum(cost_usd) FROM llm_traces "
                    "WHERE plan_id = ANY(%s)",
                    subtree[node["name"]],
                )
                assert shown == dict(
                    zip(
                        head,
                        [str(calls), str(calls - priced), str(p), str(c), f"{cost:.6f}"],
                        strict=True,
                    )
                )
            if node["kind"] == "llm":
                provider, model = node["name"].split("/")
                [(p, c, cost, error)] = rows(
                    db,
                    "SELECT prompt_tokens, completion_tokens, cost_usd, error FROM llm_traces "
                    "WHERE provider = %s AND model = %s AND plan_id <> 'errand'",
                    provider,
                    model,
                )
                price = "unpriced" if cost is None else f"{cost:.6f}"
                assert shown == dict(
                    zip(head, ["1", str(int(cost is None)), str(p), str(c), price], strict=True)
                )
                assert node["failed"] == (error is not None)
            assert node["bar"], node
        failed = {(n["kind"], n["name"]) for n in nodes if n["failed"] and n["kind"] != "plan"}
        assert ("tool", "book") in failed and ("llm", "selfhosted/house-llm") in failed

        # A call's details, reached from the tree.
        page.page.click("#plan-tree tr[data-name='openai/gpt-4o'] a")
        page.page.wait_for_selector("#call-details")
        page.page.wait_for_load_state("networkidle")
        page.page.screenshot(path=str(SCREENSHOTS / "call.png"), full_page=True)
        details = dict(
            zip(
                page.page.eval_on_selector_all(
                    "#call-details dt", "d => d.map(e => e.textContent)"
                ),
                page.page.eval_on_selector_all(
                    "#call-details dd", "d => d.map(e => e.textContent)"
                ),
                strict=True,
            )
        )
        [(cost, cache_read, cache_write, ttft, retries)] = rows(
            db,
            "SELECT cost_usd, cache_read_tokens, cache_write_tokens, ttft_ms, retry_count "
            "FROM llm_traces WHERE model = 'gpt-4o' AND plan_id = %s",
            TREE_ROOT,
        )
        assert (details["provider"], details["model"]) == ("openai", "gpt-4o")
        assert details["cost (USD)"] == f"{cost:.6f}"
        assert (details["cache read tokens"], details["cache write tokens"]) == (
            str(cache_read),
            str(cache_write),
        )
        assert (details["time to first token (ms)"], details["retries"]) == (
            number(ttft),
            str(retries),
        )
        assert details["metadata"] == '{"tier": 2}' and "search" in details["tags"]
        assert details["error"] == "none"
        page.page.click(f"#call-place a:text-is('plan {TREE_ROOT}')")
        page.page.wait_for_selector("#plan-tree")

        # Cost by tag: a line per tag (a call counts under each of its tags); by user:
        # stacked areas whose top edge, summed over the steps, is the SQL total.
        page.open(f"{base}/cost?by=tag&range=24h", "cost-by-tag")
        tags = {row[0] for row in page.cells("cost-table")}
        assert {"prod", "search", "dev"} <= tags
        assert page.page.get_attribute("#cost-chart", "data-stacked") == "no"
        page.open(f"{base}/cost?by=user&range=24h", "cost-by-user")
        users = {row[0]: row[4] for row in page.cells("cost-table")}
        assert users == {
            "(none)" if user is None else user: "unpriced" if cost is None else f"{cost:.6f}"
            for user, cost in rows(db, "SELECT user_id, sum(cost_usd) FROM llm_traces GROUP BY 1")
        }
        page.page.wait_for_selector("#cost-chart .uplot canvas")
        assert page.page.get_attribute("#cost-chart", "data-stacked") == "yes"
        top = page.page.evaluate("window.fleettraceCharts[0].data[1]")
        [(total,)] = rows(db, "SELECT sum(cost_usd) FROM llm_traces")
        assert sum(top) == pytest.approx(float(total))
    assert page.problems == []


#: Queries a page must answer with a message and a 4xx, running nothing they carry.
BAD_PAGES = [
    ("/cost?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", 400, "reversed"),
    ("/plans?limit=100000000", 400, "limit must be a whole number from 1 to 500"),
    ("/?namespace=%3Cscript%3Ealert(1)%3C%2Fscript%3E", 400, "is not a namespace name"),
    ("/dlq?namespace=nobody-uses-this", 404, "unknown namespace"),
    ("/cost?by=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", 400, "by must be one of"),
    ("/plans?min_cost=cheap&max_cost=1", 400, "min_cost must be a cost in USD"),
    ("/plans?status=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", 400, "status must be one of"),
    ("/plans/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", 404, "no plan"),
    ("/calls/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", 400, "a trace id is a UUID"),
]


def test_bad_query_input_shows_a_message(page, redis_url, keys, database_url) -> None:
    db = migrated(database_url)
    with dashboard(redis_url, keys, db) as base:
        for number, (query, status, message) in enumerate(BAD_PAGES):
            response = page.open(base + query, f"bad-input-{number}")
            assert response is not None
            assert (response.status, query) == (status, query)
            text = page.page.text_content(".error")
            assert text is not None
            assert message in text
            assert page.page.locator("img").count() == 0
    assert page.dialogs == []  # nothing the queries carried ran
    expected = ("console: Failed to load resource", "400: ", "404: ")
    assert [p for p in page.problems if not p.startswith(expected)] == []
