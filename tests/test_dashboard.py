"""The dashboard's JSON API, access rules and error answers, over HTTP against a
dashboard served on a free port; the data comes through the real pipeline
(tests/dashboard_helpers.fill_fleet). The pages in a browser: test_dashboard_browser.py."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleettrace.live import read_live
from fleettrace.plans import total_cost_usd
from fleettrace_worker.cli import main
from fleettrace_worker.serve.dashboard.access import CSRF_COOKIE
from fleettrace_worker.serve.dashboard.api import csv_text
from fleettrace_worker.serve.dashboard.exposure import is_loopback
from tests.dashboard_helpers import (
    CALLS,
    HOSTILE,
    HOSTILE_PLAN,
    api_cost_by,
    dashboard,
    drop_poison_rule,
    fill_fleet,
    get_json,
    request,
    rows,
    sql_cost_by,
)
from tests.servers import free_port
from tests.waiting import wait_until
from tests.worker_helpers import ROOT, http_get, migrated, serving_worker, worker_env

TOKEN = "a-token-long-enough-for-tests"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


CSRF = "c" * 32


@pytest.fixture
def fleet(redis_url, keys, database_url):
    return fill_fleet(redis_url, keys, database_url)


def test_api_numbers_are_the_sql_sums_and_the_live_counters(
    fleet, redis_url, keys, redis_client
) -> None:
    with dashboard(redis_url, keys, fleet) as base:
        for by in ("model", "provider", "actor"):
            status, answer = get_json(f"{base}/api/cost?by={by}&range=24h")
            assert status == 200
            assert set(answer) >= {"items", "next_cursor", "from", "to"}
            assert api_cost_by(answer["items"]) == sql_cost_by(fleet, by)
        unpriced = get_json(f"{base}/api/cost?by=model")[1]["items"]
        assert {i["key"]: i["unpriced_calls"] for i in unpriced}["house-llm"] == CALLS // 3

        series = get_json(f"{base}/api/cost/series?by=model&range=1h")[1]
        [(total,)] = rows(fleet, "SELECT sum(cost_usd) FROM llm_traces")
        assert sum(item["cost_usd"] for item in series["items"]) == pytest.approx(total)
        assert series["step_s"] == 60

        live = get_json(f"{base}/api/live")[1]
        assert live["next_cursor"] is None
        shown = {(i["key"], tuple(sorted(i["labels"].items()))): i for i in live["items"]}
        for s in read_live(redis_client, keys):
            item = shown[(s.key.value, tuple(sorted(s.labels)))]
            assert (item["count"], item["sum"]) == (s.count, s.sum)
        tool = shown[("tool.invocation_duration_ms", (("tool", HOSTILE),))]
        assert (tool["count"], tool["sum"], tool["unit"]) == (3, 131.0, "ms")

        status, csv_body = request(f"{base}/api/cost.csv?by=provider")[::2]
        assert status == 200
        lines = csv_body.decode().splitlines()
        assert (
            lines[0]
            == "provider,calls,priced_calls,unpriced_calls,cost_usd,prompt_tokens,completion_tokens"
        )
        providers = get_json(f"{base}/api/cost?by=provider")[1]["items"]
        assert [line.split(",")[0] for line in lines[1:]] == [i["key"] for i in providers]
        # An unpriced group's cost is an empty cell, never 0.
        assert [(line.split(",")[4] or None) for line in lines[1:]] == [
            None if i["cost_usd"] is None else str(i["cost_usd"]) for i in providers
        ]
        assert get_json(f"{base}/api/cost.csv?range=5y")[0] == 400

        [(calls, cost, priced, errors, retried)] = rows(
            fleet,
            "SELECT count(*), coalesce(sum(cost_usd), 0), count(cost_usd), count(error), "
            "count(*) FILTER (WHERE retry_count > 0) FROM llm_traces",
        )
        activity = get_json(f"{base}/api/activity")[1]
        assert [a["window"] for a in activity["items"]] == ["1h", "today", "24h"]
        # Every call of the fleet is minutes old (today: since UTC midnight, unless the
        # test runs across it, which test_dashboard_stored.py does not depend on).
        for item in activity["items"][::2]:
            assert item["calls"] == calls
            assert item["cost_usd"] == pytest.approx(cost)
            assert item["unpriced_calls"] == calls - priced
            assert item["error_rate"] == errors / calls
            assert item["retry_rate"] == retried / calls
        assert activity["items"][0]["calls_per_minute"] == pytest.approx(calls / 60)

        latency = get_json(f"{base}/api/performance")[1]["items"]
        expected_latency = {
            model: (calls, p50, p95)
            for model, calls, p50, p95 in rows(
                fleet,
                "SELECT model, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) "
                "FROM llm_traces GROUP BY model",
            )
        }
        assert {m["key"]: (m["calls"], m["p50_ms"], m["p95_ms"]) for m in latency} == (
            expected_latency
        )
        steps = get_json(f"{base}/api/performance/series?range=1h")[1]
        assert sum(item["calls"] for item in steps["items"]) == sum(
            calls for calls, _, _ in expected_latency.values()
        )

        overview = get_json(f"{base}/api/overview")[1]
        assert overview["spend_usd"] == pytest.approx(total_cost_usd(redis_client, keys))
        assert overview["dead_letters"]["persist"] == 1

        # Plans: every page of 3 read in turn gives each plan once, with the SQL figures.
        seen, cursor = [], ""
        while True:
            status, page = get_json(f"{base}/api/plans?limit=3&cursor={cursor}")
            assert status == 200
            assert len(page["items"]) <= 3
            seen += page["items"]
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        expected_plans = dict(
            rows(fleet, "SELECT plan_id, sum(cost_usd) FROM llm_traces GROUP BY plan_id")
        )
        # A plan nothing of which was priced reads null (unpriced), never 0.
        assert {p["plan_id"]: p["cost_usd"] for p in seen} == {
            k: None if v is None else pytest.approx(float(v)) for k, v in expected_plans.items()
        }
        assert HOSTILE_PLAN in expected_plans


def test_a_dead_letter_is_listed_and_replayed_only_with_the_csrf_token(
    fleet, redis_url, keys, redis_client
) -> None:
    with dashboard(redis_url, keys, fleet) as base:
        letters = get_json(f"{base}/api/dlq?group=persist")[1]
        [letter] = letters["items"]
        assert "no_poison" in letter["reason"]
        assert letter["replayable"] is True
        assert get_json(f"{base}/api/dlq?group=langsmith")[1] == {
            "items": [],
            "next_cursor": None,
        }
        drop_poison_rule(fleet)
        url = f"{base}/api/dlq/persist/replay"
        body = json.dumps({"ids": [letter["id"]]}).encode()
        csrf = {"Cookie": f"{CSRF_COOKIE}={CSRF}", "X-CSRF-Token": CSRF}
        refused = [
            get_json(url, data=body),  # no token at all
            get_json(url, data=body, headers={"X-CSRF-Token": CSRF}),  # no cookie
            get_json(url, data=body, headers={**csrf, "X-CSRF-Token": "d" * 32}),
            get_json(url, data=body, headers={**csrf, "Origin": "http://evil.example"}),
        ]
        assert [status for status, _ in refused] == [403] * 4
        assert all("error" in answer for _, answer in refused)
        assert redis_client.xlen(keys.dead_letters("persist")) == 1
        assert request(url, headers=csrf)[0] == 405  # a change is a POST only
        assert get_json(url, data=b"{", headers=csrf)[0] == 400
        assert get_json(url, data=b'{"ids": ["x"]}', headers=csrf)[0] == 400
        status, report = get_json(url, data=body, headers=csrf)
        assert (status, report) == (200, {"replayed": [letter["id"]], "refused": [], "missing": []})
        assert redis_client.xlen(keys.dead_letters("persist")) == 0


BAD_QUERIES = [
    ("/api/cost?by=%3Cscript%3Ealert(1)%3C/script%3E", 400, "by must be one of"),
    ("/api/cost?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", 400, "reversed"),
    ("/api/cost?from=yesterday", 400, "ISO 8601"),
    ("/api/cost?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", 400, "at most 400"),
    ("/api/cost?range=5y", 400, "range must be one of"),
    ("/api/plans?limit=1000000", 400, "limit must be a whole number from 1 to 500"),
    ("/api/plans?limit=-1", 400, "limit must be"),
    ("/api/plans?cursor=%%%", 400, "cursor"),
    ("/api/live?namespace=no-such-namespace-here", 404, "unknown namespace"),
    ("/api/live?namespace=%3Cscript%3E", 400, "not a namespace name"),
    ("/api/dlq?group=%3Cscript%3E", 400, "group must be one of"),
    ("/api/dlq?cursor=nope", 400, "cursor"),
    ("/api/cost?by=" + "x" * 300, 400, "longer than 200"),
    ("/api/performance?range=5y", 400, "range must be one of"),
    ("/api/nothing", 404, "no such endpoint"),
]


def test_bad_query_input_is_a_4xx_with_a_clear_message(redis_url, keys, database_url) -> None:
    """The API answers 4xx JSON, the page of the same query the message, escaped."""
    db = migrated(database_url)
    with dashboard(redis_url, keys, db) as base:
        for query, status, message in BAD_QUERIES:
            got, answer = get_json(base + query)
            assert (got, query) == (status, query)
            assert message in answer["error"], query
            page = query.replace("/api/", "/", 1).replace("/live", "/")
            if page.startswith(("/cost", "/plans", "/?namespace", "/performance")):
                got_page, headers, body = request(base + page)
                assert (got_page, page) == (status, page)
                assert message.encode() in body
                assert b"<script>" not in body.replace(b'<script src="/static/', b"")
                assert headers["content-type"].startswith("text/html")


def test_a_cost_key_cannot_become_a_spreadsheet_formula() -> None:
    item = {"calls": 1, "priced_calls": 1, "unpriced_calls": 0, "cost_usd": 0.5}
    item |= {"prompt_tokens": 3, "completion_tokens": 4}
    text = csv_text("model", [{**item, "key": '=HYPERLINK("http://x","y")'}, {**item, "key": None}])
    assert text.splitlines()[1:] == [
        '"\'=HYPERLINK(""http://x"",""y"")",1,1,0,0.5,3,4',
        ",1,1,0,0.5,3,4",
    ]


def test_a_dashboard_beyond_loopback_needs_a_token(capsys, monkeypatch) -> None:
    monkeypatch.delenv("FLEETTRACE_DASHBOARD_TOKEN", raising=False)
    assert main(["dashboard", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "set FLEETTRACE_DASHBOARD_TOKEN, or bind to 127.0.0.1" in err
    monkeypatch.setenv("FLEETTRACE_DASHBOARD_TOKEN", "short")
    assert main(["dashboard", "--port", "0"]) == 2
    assert "must be at least 16 characters" in capsys.readouterr().err
    monkeypatch.delenv("FLEETTRACE_DASHBOARD_TOKEN")
    # The worker's --dashboard: the same rule, and only with --http.
    assert main(["worker", "--dashboard"]) == 2
    assert "--dashboard needs --http HOST:PORT" in capsys.readouterr().err
    assert main(["worker", "--dashboard", "--http", f"0.0.0.0:{free_port()}"]) == 2
    assert "set FLEETTRACE_DASHBOARD_TOKEN" in capsys.readouterr().err


def test_with_a_token_pages_and_api_need_it_and_probes_stay_open(
    redis_url, keys, database_url
) -> None:
    db = migrated(database_url)
    with dashboard(redis_url, keys, db, token=TOKEN) as base:
        assert request(f"{base}/healthz")[0] == 200
        assert request(f"{base}/readyz")[::2] == (200, b"ready\n")
        assert request(f"{base}/static/app.js")[0] == 200
        assert get_json(f"{base}/api/live")[0] == 401
        wrong = {"Authorization": "Bearer " + "x" * len(TOKEN)}
        assert get_json(f"{base}/api/live", headers=wrong)[0] == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert get_json(f"{base}/api/live", headers=right) == (
            200,
            {"items": [], "next_cursor": None},
        )
        status, _, body = request(f"{base}/cost")  # redirected to the login page
        assert status == 200
        assert b'name="token"' in body
        assert request(f"{base}/login", data=b"token=nope")[0] == 401
        asked = urllib.request.Request(f"{base}/login", data=f"token={TOKEN}".encode())
        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as signed_in:
            opener.open(asked, timeout=30)
        assert signed_in.value.code == 303
        cookie = signed_in.value.headers["set-cookie"]
        assert cookie.startswith(f"fleettrace_token={TOKEN};")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert request(f"{base}/cost", headers={"Cookie": f"fleettrace_token={TOKEN}"})[0] == 200


def test_the_worker_serves_the_dashboard_and_gzips_metrics_on_request(
    redis_url, keys, database_url
) -> None:
    db = migrated(database_url)
    with serving_worker(redis_url, db, keys, dashboard=True) as (_, base):
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 30, "ready")
        status, headers, body = request(f"{base}/metrics", headers={"Accept-Encoding": "gzip"})
        assert status == 200
        assert headers["content-encoding"] == "gzip"
        text = gzip.decompress(body).decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert "fleettrace_worker_ready" in names
        plain = request(f"{base}/metrics")
        assert "content-encoding" not in plain[1]
        assert plain[2].startswith(b"# HELP")
        assert get_json(f"{base}/api/live")[1] == {"items": [], "next_cursor": None}
        assert request(f"{base}/")[0] == 200
        assert request(f"{base}/api/live?namespace={quote('<x>')}")[0] == 400


@pytest.mark.slow  # a fresh interpreter importing the whole CLI
def test_the_dashboard_command_serves_until_sigterm(redis_url, keys, database_url) -> None:
    db = migrated(database_url)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fleettrace_worker.cli", "dashboard", "--port", str(port)],
        env=worker_env(redis_url, db, keys),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_get(f"{base}/readyz") == (200, "ready\n"), 30, "ready")
        assert request(f"{base}/")[0] == 200
        assert request(f"{base}/static/vendor/uPlot.iife.min.js")[0] == 200
        assert request(f"{base}/metrics")[0] == 404  # the worker's, not the dashboard's
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out == f"fleettrace dashboard: serving {base}/ (Ctrl-C to stop)\n"


def test_readyz_of_the_dashboard_says_which_server_is_away(redis_url, keys) -> None:
    away = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    with dashboard(redis_url, keys, away) as base:
        status, _, body = request(f"{base}/readyz")
        assert status == 503
        assert body.startswith(b"not ready: PostgreSQL unavailable: ")
        status, answer = get_json(f"{base}/api/cost")
        assert status == 503
        assert answer["error"].startswith("PostgreSQL unavailable: ")
        status, _, page = request(f"{base}/plans")
        assert status == 503
        assert b"PostgreSQL unavailable" in page
        status, answer = get_json(f"{base}/api/performance/samples")
        assert (status, answer["error"][:23]) == (503, "PostgreSQL unavailable:")
        # The Overview's live part still shows; the stored calls are a message.
        status, _, page = request(f"{base}/")
        assert status == 200 and b'id="spend"' in page
        assert b'<p class="error" role="alert">PostgreSQL unavailable: ' in page


def test_a_database_url_libpq_cannot_read_is_refused_without_its_password(capsys) -> None:
    url = "postgresql://user:s3cret-pw-here@127.0.0.1:5432/db?x=%zz"
    assert main(["dashboard", "--database-url", url, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "fleettrace dashboard: cannot read the database URL "
        "'postgresql://user:***@127.0.0.1:5432/db?x=%zz'\n"
    )


def test_what_counts_as_loopback() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.com")] == [False] * 4


def test_a_database_without_the_tables_and_odd_replays_are_clear_answers(
    redis_url, keys, database_url
) -> None:
    with dashboard(redis_url, keys, database_url) as base:  # not migrated
        for path in ("/api/cost", "/api/cost.csv"):
            status, answer = get_json(base + path)
            assert (status, answer) == (
                503,
                {"error": "the database has no fleettrace tables: run fleettrace migrate"},
            )
        status, _, page = request(f"{base}/")  # the live part still shows
        assert status == 200
        assert b"run fleettrace migrate" in page
        assert b'id="live-series"' in page

        csrf = {"Cookie": f"{CSRF_COOKIE}={CSRF}", "X-CSRF-Token": CSRF}
        url = f"{base}/api/dlq/persist/replay"
        too_many = json.dumps({"ids": ["1-0"] * 501}).encode()
        assert get_json(url, data=too_many, headers=csrf) == (
            400,
            {"error": "at most 500 ids per request"},
        )
        assert get_json(url, data=b"[1]", headers=csrf)[0] == 400
        assert get_json(url, data=b" " * 70_000, headers=csrf)[0] == 413
        assert (
            get_json(f"{base}/api/dlq/nope/replay", data=b'{"ids": ["1-0"]}', headers=csrf)[0]
            == 400
        )
        status, report = get_json(url, data=b'{"ids": ["1-0"]}', headers=csrf)
        assert (status, report) == (200, {"replayed": [], "refused": [], "missing": ["1-0"]})

        # The page's form: the same checks, answered as pages.
        form = {"Cookie": f"{CSRF_COOKIE}={CSRF}"}
        page_url = f"{base}/dlq/replay"
        cases = [
            (b"group=persist&id=1-0", 403, b"CSRF token"),
            (f"csrf={CSRF}&group=nope&id=1-0".encode(), 400, b"group must be one of"),
            (f"csrf={CSRF}&group=persist".encode(), 400, b"choose at least one"),
            (b"x" * 70_000, 413, b"too large"),
            (f"csrf={CSRF}&group=persist&id=1-0".encode(), 200, b"not found 1"),
        ]
        for body, expected, said in cases:
            status, _, answer = request(page_url, data=body, headers=form)
            assert (status, said in answer) == (expected, True)
        status, _, answer = request(
            page_url,
            data=f"csrf={CSRF}&group=persist&id=1-0&namespace=nobody-here".encode(),
            headers=form,
        )
        assert (status, b"unknown namespace" in answer) == (404, True)
