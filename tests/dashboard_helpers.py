"""A fleet for the dashboard tests, filled through the real pipeline (emitter -> Redis ->
worker -> PostgreSQL), and a dashboard served on a free loopback port."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import psycopg
import pytest
import redis

from fleettrace import hooks
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys
from fleettrace.live import read_live
from fleettrace.metrics import MetricKey
from fleettrace_worker.cli.dashboard import probe_routes
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.serve.dashboard.app import DashboardSettings, build_app
from fleettrace_worker.serve.history import Totals
from fleettrace_worker.serve.webserver import HttpServer
from tests.emitting import make_emitter
from tests.factories import numbered_trace
from tests.worker_helpers import drain, migrated

#: (provider, model) of the calls; the last is unknown to the pricer: its calls stay unpriced.
MODELS = (("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"), ("selfhosted", "house-llm"))
CALLS = 60
OTHER_CALLS = 7
#: A tool name and a plan id an agent chose: they must reach every page escaped.
HOSTILE = "<script>alert(1)</script>"
HOSTILE_PLAN = "plan-<b>bold</b>"
#: Durations fill_fleet observes, stored as metric samples (the Performance page's).
SAMPLED = (
    (MetricKey.CONTEXT_BUILD_DURATION_MS, {"tier": "warm"}, (5.0, 9.0, 40.0, 41.5)),
    (MetricKey.INDEX_QUERY_DURATION_MS, {"backend": "pgvector"}, (2.0, 4.0)),
    (MetricKey.SANDBOX_OPERATION_DURATION_MS, {"operation": "exec"}, (100.0, 250.0, 900.0)),
)


#: The call fill_fleet records that the database refuses: counted live, not stored.
POISON = numbered_trace(CALLS, model="poison", cost_usd=0.25)


def fill_fleet(redis_url: str, keys: Keys, database_url: str) -> str:
    """Record CALLS calls over three models and two actors (priced except house-llm),
    one call the database refuses (a dead letter, replayable once the constraint is
    gone), a few tool durations and the SAMPLED durations; run a worker until the
    streams are drained. Returns the migrated database's URL."""
    db = migrated(database_url)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE llm_traces ADD CONSTRAINT no_poison CHECK (model <> 'poison')")
    emitter = Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace))
    for i in range(CALLS):
        provider, model = MODELS[i % len(MODELS)]
        fields: dict[str, Any] = {
            "provider": provider,
            "model": model,
            "actor": ("planner", "coder")[i % 2],
        }
        if provider != "selfhosted":
            fields["cost_usd"] = round(0.0011 * (i + 1), 6)
        if i == 5:
            fields["plan_id"] = HOSTILE_PLAN
        emitter.record(numbered_trace(i, **fields))
    emitter.record(POISON)
    for value in (3.0, 8.0, 120.0):
        emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, value, {"tool": HOSTILE})
    for key, labels, values in SAMPLED:
        for value in values:
            emitter.observe(key, value, labels)
    assert emitter.flush(30)
    emitter.close()
    drain(redis_url, keys, db)
    return db


def fill_other_namespace(redis_url: str, keys: Keys, database_url: str) -> None:
    """A second fleet in the same (migrated) database under ``keys``: fewer, dearer
    calls of other plans, so no figure of it equals one of fill_fleet's."""
    emitter = Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace))
    for i in range(OTHER_CALLS):
        provider, model = MODELS[i % 2]
        emitter.record(
            numbered_trace(
                1000 + i,
                provider=provider,
                model=model,
                actor="reviewer",
                cost_usd=round(0.5 + 0.01 * i, 6),
                plan_id=f"other-plan-{i % 3}",
                error="timeout" if i == 0 else None,
                retry_count=1 if i == 1 else 0,
            )
        )
    assert emitter.flush(30)
    emitter.close()
    drain(redis_url, keys, database_url)


#: The plan tree fill_plan_tree records; its child plan; a plan of another tag.
TREE_ROOT, TREE_CHILD, TREE_OTHER = "trip", "trip/hotel <i>", "errand"
#: The budget ``trip`` is given (``errand`` has none).
TREE_BUDGET = 0.04


def fill_plan_tree(redis_url: str, keys: Keys, database_url: str) -> None:
    """Plans recorded through the hooks (emitter -> Redis -> worker -> PostgreSQL):
    ``trip`` (tag ``prod``, user ``alice``, budget TREE_BUDGET) with a decision, an
    actor, a priced call that read and wrote the cache, was retried and streamed, a
    tool, and a child plan
    ``trip/hotel <i>`` (user ``bob``: a priced call, an unpriced failed one, a failed
    tool); and ``errand`` (tag ``dev``, no user), one dear call. Calls start at set
    offsets so the waterfall has a shape. ``database_url`` must be migrated."""
    emitter = make_emitter(redis_url, keys)
    start = datetime.now(UTC) - timedelta(seconds=2)  # every call in the past: listed now

    def at(ms: float) -> datetime:
        return start + timedelta(milliseconds=ms)

    try:
        with hooks.plan(
            TREE_ROOT, emitter=emitter, tags=["prod"], user_id="alice", budget_usd=TREE_BUDGET
        ):
            with (
                hooks.decision("d-1", emitter=emitter),
                hooks.actor("planner", emitter=emitter),
            ):
                hooks.record_llm_call(
                    "openai", "gpt-4o", emitter=emitter, prompt_tokens=1000,
                    completion_tokens=100, cache_read_tokens=400, cache_write_tokens=100,
                    cost_usd=0.0125, latency_ms=800.0, ttft_ms=120.0, retry_count=1,
                    streaming=True, tags=["search"], metadata={"tier": 2},
                    started_at=at(0),
                )  # fmt: skip
                with hooks.tool("search", emitter=emitter):
                    pass
            with (
                hooks.plan(TREE_CHILD, emitter=emitter, user_id="bob"),
                hooks.decision("h-1", emitter=emitter),
                hooks.actor("booker", emitter=emitter),
            ):
                hooks.record_llm_call(
                    "anthropic", "claude-sonnet-4-5", emitter=emitter, prompt_tokens=500,
                    completion_tokens=50, cost_usd=0.02, latency_ms=300.0, started_at=at(900),
                )  # fmt: skip
                hooks.record_llm_call(
                    "selfhosted", "house-llm", emitter=emitter, prompt_tokens=200,
                    completion_tokens=20, latency_ms=150.0, error="RateLimitError: slow down",
                    started_at=at(1300),
                )  # fmt: skip
                with pytest.raises(RuntimeError), hooks.tool("book", emitter=emitter):
                    raise RuntimeError("no rooms")
        with hooks.plan(TREE_OTHER, emitter=emitter, tags=["dev"]):
            hooks.record_llm_call(
                "openai", "gpt-4o", emitter=emitter, prompt_tokens=3000, completion_tokens=10,
                cost_usd=0.5, latency_ms=90.0,
            )  # fmt: skip
        assert emitter.flush(30)
    finally:
        emitter.close()
    drain(redis_url, keys, database_url)


def drop_poison_rule(database_url: str) -> None:
    """The cause of the dead letter, fixed: replay can now bring it home."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE llm_traces DROP CONSTRAINT no_poison")


def live_call_totals(database_url: str, namespace: str) -> Totals:
    """What the live counters must hold after fill_fleet: the stored calls' figures,
    plus the call the database refused (still a dead letter)."""
    [(calls, priced, cost, errors, retried)] = rows(
        database_url,
        "SELECT count(*), count(cost_usd), coalesce(sum(cost_usd), 0), count(error), "
        "count(*) FILTER (WHERE retry_count > 0) FROM llm_traces WHERE namespace = %s",
        namespace,
    )
    return Totals(
        calls + 1,
        priced + 1,
        float(cost) + 0.25,
        errors + (POISON.error is not None),
        retried + (POISON.retry_count > 0),
    )


def check_live_rows(
    shown: list[list[str]], database_url: str, keys: Keys, client: redis.Redis
) -> Totals:
    """The Overview's calls from the live counters (``#live-activity``), each window
    counted from an all-zero sample: every row shows the live totals (``read_live``),
    which are the SQL sums plus the refused call (calls per minute aside). Returns them."""
    stored = live_call_totals(database_url, keys.namespace)
    assert astuple(Totals.of(read_live(client, keys))) == pytest.approx(astuple(stored))
    figures = [
        str(stored.calls),
        f"{stored.cost_usd:.6f}",
        str(stored.calls - stored.priced_calls),
        "" if not stored.calls else f"{stored.errors / stored.calls * 100:.1f} %",
        "" if not stored.calls else f"{stored.retried / stored.calls * 100:.1f} %",
    ]
    assert len(shown) == 3
    for row in shown:
        assert [row[1], *row[3:]] == figures
    return stored


def check_live_latency(shown: list[list[str]], database_url: str) -> None:
    """The Overview's latency per model from the live counters (``#live-latency``):
    each stored provider and model's calls, and p50/p95 within 2 % of the rows'
    ``percentile_disc``; the refused call's model counts its one call."""
    found = {(row[0], row[1]): row[2:] for row in shown}
    for provider, model, n, p50, p95 in rows(
        database_url,
        "SELECT provider, model, count(*), "
        "percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms), "
        "percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM llm_traces "
        "GROUP BY 1, 2",
    ):
        row = found[(provider, model)]
        assert row[0] == str(n)
        assert float(row[1]) == pytest.approx(p50, rel=0.02)
        assert float(row[2]) == pytest.approx(p95, rel=0.02)
    assert found[(POISON.provider, POISON.model)][0] == "1"


def page_cells(html: str, table_id: str) -> list[list[str]]:
    """The text of each body cell of one table of a page."""
    body = html.split(f'<table id="{table_id}">', 1)[1].split("</table>", 1)[0]
    body = body.split("<tbody>", 1)[1]
    return [
        [unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body)
    ]


def rows(database_url: str, query: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query, args).fetchall()  # type: ignore[arg-type]


@contextmanager
def dashboard(
    redis_url: str,
    keys: Keys,
    database_url: str,
    *,
    token: str | None = None,
    read_url: str | None = None,
) -> Iterator[str]:
    """A dashboard on a free loopback port (reading from ``read_url`` when given);
    yields its base URL."""
    settings = DashboardSettings(redis_url, database_url, keys.namespace, token, read_url=read_url)
    app = build_app(probe_routes(redis_url, settings.reading_url), settings)
    server = HttpServer(app, "127.0.0.1", 0)
    try:
        yield server.url
    finally:
        server.shutdown()


def request(
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (names in lower case) and body of one request; an error status
    is an answer too."""
    asked = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(asked, timeout=30) as answer:
            return answer.status, _lower(answer.headers.items()), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers.items()), error.read()


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def get_json(url: str, **more: Any) -> tuple[int, Any]:
    status, _, body = request(url, **more)
    return status, json.loads(body)


__all__ = ["CALLS", "HOSTILE", "MODELS", "PERSIST_GROUP"]


def _cents(cost: float | None) -> float | None:
    return None if cost is None else round(cost, 9)


def sql_cost_by(database_url: str, by: str, namespace: str | None = None) -> dict[Any, tuple]:
    """(calls, priced calls, cost or None) per ``by`` from the rows themselves, of one
    namespace when given: what /api/cost must answer."""
    where = "" if namespace is None else "WHERE namespace = %s "
    args = () if namespace is None else (namespace,)
    return {
        key: (calls, priced, _cents(cost))
        for key, calls, priced, cost in rows(
            database_url,
            f"SELECT {by}, count(*), count(cost_usd), sum(cost_usd) "
            f"FROM llm_traces {where}GROUP BY {by}",
            *args,
        )
    }


def api_cost_by(items: list[dict[str, Any]]) -> dict[Any, tuple]:
    """The same figures from an /api/cost answer's items."""
    return {
        item["key"]: (item["calls"], item["priced_calls"], _cents(item["cost_usd"]))
        for item in items
    }
