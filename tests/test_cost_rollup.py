"""The hourly cost rollup (schema version 7) equals the raw rows it sums, whatever
added or removed them: the worker's first store, a redelivered batch, prune, erase,
and the backfill of rows stored before it existed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace_worker.serve.dashboard import queries
from fleettrace_worker.store import database, erasure, migrations, retention
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.dashboard_helpers import api_cost_by, dashboard, get_json, rows
from tests.factories import llm_trace

NOW = datetime(2026, 11, 30, 12, 30, tzinfo=UTC)
KEY = "namespace, hour, provider, model, actor"
#: The rollup's figures, and the same figures summed from the raw rows.
ROLLUP = (
    "SELECT nullif(namespace, '') AS namespace, hour, provider, model, "
    "nullif(actor, '') AS actor, calls, priced_calls, cost_usd, prompt_tokens, completion_tokens, "
    f"errors, retried_calls FROM llm_cost_hourly ORDER BY {KEY}"
)
TAG_ROLLUP = (
    "SELECT namespace, hour, tag, calls, priced_calls, cost_usd, prompt_tokens, "
    "completion_tokens FROM llm_cost_hourly_tags ORDER BY 1, 2, 3"
)
TAG_RAW = (
    "SELECT namespace, date_trunc('hour', started_at, 'UTC'), tag, count(*), count(cost_usd), "
    "coalesce(sum(cost_usd::numeric), 0), coalesce(sum(prompt_tokens), 0), "
    "coalesce(sum(completion_tokens), 0) FROM llm_traces, unnest(tags) AS tag "
    "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
RAW = (
    "SELECT namespace, date_trunc('hour', started_at, 'UTC') AS hour, provider, model, actor, "
    "count(*), count(cost_usd), coalesce(sum(cost_usd::numeric), 0), "
    "coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), count(error), "
    f"count(*) FILTER (WHERE retry_count > 0) FROM llm_traces GROUP BY 1, 2, 3, 4, 5 ORDER BY {KEY}"
)


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    with database.create_pool(database_url, min_size=1, max_size=2) as made:
        migrations.migrate(made)
        yield made


def _calls(count: int, seed: int, **fields: object) -> list[LLMTrace]:
    """Calls over four days before NOW, of varied models, actors, prices and users."""
    rng = random.Random(seed)
    return [
        llm_trace(
            {
                "provider": provider,
                "model": model,
                "actor": rng.choice(["planner", "coder", None]),
                "prompt_tokens": rng.randint(1, 5000),
                "completion_tokens": rng.randint(1, 900),
                "cost_usd": None if rng.random() < 0.3 else rng.uniform(0, 0.2),
                "error": "boom" if rng.random() < 0.1 else None,
                "retry_count": rng.choice([0, 0, 2]),
                "user_id": rng.choice(["ann", "bob"]),
                "tags": rng.choice([[], ["alpha"], ["alpha", "beta"], ["gamma"]]),
                "started_at": NOW - timedelta(seconds=rng.uniform(0, 4 * 86400)),
            },
            **fields,
        )
        for provider, model in (
            rng.choice([("openai", "gpt-4o"), ("anthropic", "claude"), ("acme", "x")])
            for _ in range(count)
        )
    ]


def _tables(url: str, *, tags: bool = False) -> tuple[list[tuple[object, ...]], ...]:
    rolled, raw = (TAG_ROLLUP, TAG_RAW) if tags else (ROLLUP, RAW)
    with psycopg.connect(url) as conn:
        return conn.execute(rolled).fetchall(), conn.execute(raw).fetchall()


def _assert_rollup_is_the_raw_sum(url: str) -> list[tuple[object, ...]]:
    """Both rollups equal the raw rows' sums; the rows of the first."""
    rollup, raw = _tables(url)
    assert rollup == raw
    by_tag, raw_by_tag = _tables(url, tags=True)
    assert by_tag == raw_by_tag
    assert by_tag  # the calls have tags
    assert {row[2] for row in by_tag} <= {"alpha", "beta", "gamma"}
    return rollup


def test_the_rollup_follows_stores_redeliveries_prunes_and_erasures(
    pool: ConnectionPool, database_url: str
) -> None:
    repository = LLMTraceRepository(pool)
    first = _calls(300, seed=1)
    result = repository.store(first, namespace="fleet-a")
    assert result.traces_inserted == 300
    rollup = _assert_rollup_is_the_raw_sum(database_url)
    assert sum(row[5] for row in rollup) == 300  # type: ignore[misc]

    # A redelivery: the same batch again with new calls in it. The copy meets rows
    # already there, the merge skips them: only the new ones count.
    again = first[:120] + _calls(50, seed=2)
    result = repository.store(again, namespace="fleet-a")
    assert (result.traces_inserted, result.traces_duplicate) == (50, 120)
    # And the same batch a third time, nothing new: the rollup does not move.
    before = _assert_rollup_is_the_raw_sum(database_url)
    repository.store(again, namespace="fleet-a")
    assert _assert_rollup_is_the_raw_sum(database_url) == before
    assert sum(row[5] for row in before) == 350  # type: ignore[misc]

    # Another namespace is a row of its own.
    repository.store(_calls(40, seed=3), namespace="fleet-b")
    _assert_rollup_is_the_raw_sum(database_url)

    # Prune mid-hour: whole hours go, the hour of the cutoff keeps what is left of it.
    cutoff = NOW - timedelta(days=2, minutes=17)
    report = retention.prune(pool, cutoff, batch_rows=37)
    assert report.traces > 0
    rollup = _assert_rollup_is_the_raw_sum(database_url)
    assert min(row[1] for row in rollup) == cutoff.replace(minute=0)  # type: ignore[type-var]

    # Erase one user: their calls leave the sums.
    erased = erasure.erase(pool, "user", "ann", batch_rows=25)
    assert erased.total > 0
    rollup = _assert_rollup_is_the_raw_sum(database_url)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM llm_traces").fetchone() == (
            sum(row[5] for row in rollup),  # type: ignore[misc]
        )
        # An emptied key leaves no row of zeros behind.
        assert conn.execute("SELECT count(*) FROM llm_cost_hourly WHERE calls <= 0").fetchone() == (
            0,
        )
        # An update (a repricing by hand) moves the sums with it, and a truncate empties them.
        conn.execute("UPDATE llm_traces SET cost_usd = 0.5 WHERE model = 'x'")
        conn.commit()
    rollup = _assert_rollup_is_the_raw_sum(database_url)
    assert any(row[7] == Decimal("0.5") * row[6] for row in rollup if row[3] == "x")  # type: ignore[operator]
    with psycopg.connect(database_url) as conn:
        conn.execute("TRUNCATE llm_traces")
    assert _tables(database_url) == ([], [])
    assert _tables(database_url, tags=True) == ([], [])


def test_the_migration_backfills_rows_stored_before_it(
    pool: ConnectionPool, database_url: str
) -> None:
    LLMTraceRepository(pool).store(_calls(200, seed=4), namespace="old")
    with psycopg.connect(database_url) as conn:
        # The database as version 6 left it: no rollup, no triggers, no prefix index.
        for event in ("insert", "delete", "update", "truncate"):
            conn.execute(f"DROP TRIGGER llm_traces_rollup_{event} ON llm_traces")
        conn.execute("DROP FUNCTION fleettrace_cost_rollup_apply, fleettrace_cost_rollup_truncate")
        conn.execute("DROP TABLE llm_cost_hourly, llm_cost_hourly_tags")
        conn.execute("DROP INDEX llm_traces_plan_prefix_idx")
        conn.execute("DELETE FROM fleettrace_schema_version WHERE version = 7")
    LLMTraceRepository(pool).store(_calls(30, seed=5), namespace="old")
    result = migrations.migrate(pool)
    assert result.applied == ("0007_cost_rollup",)
    rollup = _assert_rollup_is_the_raw_sum(database_url)
    assert sum(row[5] for row in rollup) == 230  # type: ignore[misc]


def test_long_ranges_read_the_rollup_and_answer_what_the_raw_rows_do(
    pool: ConnectionPool, database_url: str, redis_url: str, keys: Keys
) -> None:
    repository = LLMTraceRepository(pool)
    now = datetime.now(UTC)
    # Spread over the last ten days, some in the minutes just inside and outside each
    # end of the ranges read below.
    calls = [
        call.model_copy(update={"started_at": now - timedelta(seconds=(i * 2161) % (10 * 86400))})
        for i, call in enumerate(_calls(400, seed=6))
    ]
    repository.store(calls, namespace=keys.namespace)
    repository.store(_calls(50, seed=7), namespace="someone-else")
    spans = [
        queries.TimeRange(now - timedelta(days=7), now, "7d"),
        queries.TimeRange(
            now - timedelta(days=3, minutes=13), now - timedelta(hours=5, minutes=1), "c"
        ),
        queries.TimeRange(
            now.replace(minute=0, second=0, microsecond=0) - timedelta(days=4),
            now.replace(minute=0, second=0, microsecond=0),
            "c",
        ),
        queries.TimeRange(now - timedelta(minutes=50), now, "c"),  # no whole hour: raw rows
        queries.TimeRange(now - timedelta(days=90), now, "90d"),  # steps of six hours
    ]
    for span in spans:
        for by in queries.COST_GROUPS:
            raw = queries.cost_table(database_url, keys.namespace, by, span, 500, use_rollup=False)
            rolled = queries.cost_table(
                database_url, keys.namespace, by, span, 500, use_rollup=True
            )
            assert api_cost_by(rolled) == api_cost_by(raw)
            assert [(r["key"], r["prompt_tokens"], r["completion_tokens"]) for r in rolled] == [
                (r["key"], r["prompt_tokens"], r["completion_tokens"]) for r in raw
            ]
            assert sum(r["calls"] for r in raw) > 0
            # The chart's series too, step by step, when its steps are whole hours.
            raw_series = queries.cost_series(
                database_url, keys.namespace, by, span, use_rollup=False
            )
            rolled_series = queries.cost_series(
                database_url, keys.namespace, by, span, use_rollup=True
            )
            assert [_point(p) for p in rolled_series] == [_point(p) for p in raw_series]
    # The API picks the rollup past two days, the raw rows under it; both equal SQL.
    with dashboard(redis_url, keys, database_url) as url:
        for name in ("24h", "7d", "90d"):
            status, answer = get_json(f"{url}/api/cost?by=model&range={name}")
            assert status == 200
            expected = rows(
                database_url,
                "SELECT model, count(*), count(cost_usd), sum(cost_usd) FROM llm_traces "
                "WHERE namespace = %s AND started_at >= %s AND started_at < %s GROUP BY 1",
                keys.namespace,
                datetime.fromisoformat(answer["from"]),
                datetime.fromisoformat(answer["to"]),
            )
            assert api_cost_by(answer["items"]) == {
                key: (n, priced, None if cost is None else round(cost, 9))
                for key, n, priced, cost in expected
            }
    # The 7-day answer really comes from the rollup: a rollup row changed by hand shows.
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE llm_cost_hourly SET calls = calls + 1000 WHERE namespace = %s",
            (keys.namespace,),
        )
    week = queries.cost_table(database_url, keys.namespace, "model", spans[0], 500)
    raw = queries.cost_table(database_url, keys.namespace, "model", spans[0], 500, use_rollup=False)
    assert sum(r["calls"] for r in week) > sum(r["calls"] for r in raw) + 1000
    day = queries.TimeRange(now - timedelta(days=1), now, "24h")
    assert queries.cost_table(database_url, keys.namespace, "model", day, 500) == (
        queries.cost_table(database_url, keys.namespace, "model", day, 500, use_rollup=False)
    )


def _point(item: dict[str, object]) -> tuple[object, ...]:
    cost = item["cost_usd"]
    assert isinstance(cost, float)
    return item["t"], item["key"], item["calls"], round(cost, 9)
