"""Per-plan live counters: one expiring hash per plan, written by the real emitter,
read back one plan at a time or by bounded SCAN, and the move out of the old layout."""

from __future__ import annotations

import time
import urllib.request

import pytest
import redis

from fleettrace import ConfigurationError, EmitterSettings, LLMTrace, MetricKey, hooks
from fleettrace.keys import PLAN_TTL_S, Keys
from fleettrace.live import is_over_budget, plan_cost_usd, read_live
from fleettrace.plans import (
    count_plans,
    legacy_plan_fields,
    migrate_legacy_plan_fields,
    read_plan,
    top_plans,
    total_cost_usd,
)
from fleettrace_worker.cli import main, render
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.process import Worker
from fleettrace_worker.serve.http import serve
from tests.emitting import make_emitter
from tests.servers import free_port
from tests.tables import read_table

COST = "plan.cost_usd"


def spend(plan_id: str, cost: float) -> LLMTrace:
    return LLMTrace(provider="openai", model="gpt-4o", plan_id=plan_id, cost_usd=cost)


def test_a_plans_counters_are_one_hash_that_expires_after_its_last_write(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys, plan_ttl_s=1000)
    with hooks.plan("p|1", emitter=emitter):
        with hooks.decision("d", emitter=emitter):
            emitter.record(spend("p|1", 0.25))
        with hooks.plan("child", emitter=emitter):
            emitter.record(spend("child", 0.5))
    emitter.record(spend("p|1", 0.5))
    assert emitter.flush(10)

    key = keys.plan("p|1")
    assert key == f"{keys.prefix}:p:default:plan:p%7C1"
    assert {f.decode(): v.decode() for f, v in redis_client.hgetall(key).items()} == {
        "plan.cost_usd||count": "2",
        "plan.cost_usd||sum": "0.75",
        "plan.decisions_count||count": "1",
        "plan.decisions_count||sum": "1",
        "plan.child_plans_count||count": "1",
        "plan.child_plans_count||sum": "1",
    }
    assert 0 < redis_client.ttl(key) <= 1000
    assert 0 < redis_client.ttl(keys.plan("child")) <= 1000
    # Nothing per plan in the fleet-wide hashes any more.
    for metric_key in (COST, "plan.decisions_count", "plan.child_plans_count"):
        assert not redis_client.exists(keys.live(metric_key))

    # Every write pushes the expiry back: a plan that keeps running keeps its counters.
    redis_client.expire(key, 5)
    emitter.record(spend("p|1", 0.25))
    assert emitter.close()
    assert 5 < redis_client.ttl(key) <= 1000
    assert plan_cost_usd(redis_client, keys, "p|1") == pytest.approx(1.0)

    plan = read_plan(redis_client, keys, "p|1")
    assert plan is not None
    assert (plan.plan_id, plan.priced_calls, plan.decisions, plan.child_plans) == (
        "p|1",
        3,
        1,
        1,
    )
    assert plan.cost_usd == pytest.approx(1.0)
    assert [(s.key.value, s.labels) for s in plan.series] == [
        (COST, (("plan", "p|1"),)),
        ("plan.decisions_count", (("plan", "p|1"),)),
        ("plan.child_plans_count", (("plan", "p|1"),)),
    ]
    # An expired plan is gone: no counters, no cost, not over any budget.
    redis_client.delete(key)
    assert read_plan(redis_client, keys, "p|1") is None
    assert plan_cost_usd(redis_client, keys, "p|1") == 0.0
    assert not is_over_budget(redis_client, keys, "p|1", 0.0)


def test_default_ttl_is_seven_days_and_a_bad_one_is_refused(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    assert EmitterSettings().plan_ttl_s == PLAN_TTL_S == 7 * 24 * 3600
    emitter = make_emitter(redis_url, keys)
    emitter.record(spend("p", 0.1))
    assert emitter.close()
    assert 6 * 24 * 3600 < redis_client.ttl(keys.plan("p")) <= PLAN_TTL_S
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ConfigurationError, match="plan_ttl_s must be a positive integer"):
            EmitterSettings(plan_ttl_s=bad)  # type: ignore[arg-type]


def test_top_plans_ranks_by_cost_in_bounded_scan_steps(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys)
    costs = {f"run-{i:02d}": float(i % 7) for i in range(30)}
    costs["run-*"] = 6.0  # a glob character in an id is matched literally
    costs["other"] = 100.0
    for plan_id, cost in costs.items():
        emitter.record(spend(plan_id, cost))
    emitter.observe(MetricKey.PLAN_DECISIONS_COUNT, 1, {"plan": "unpriced"})
    assert emitter.close()

    scan = top_plans(redis_client, keys, 5, count=4)
    assert [(p.plan_id, p.cost_usd) for p in scan.plans] == [
        ("other", 100.0),
        ("run-*", 6.0),
        ("run-06", 6.0),
        ("run-13", 6.0),
        ("run-20", 6.0),
    ]
    assert (scan.examined, scan.complete) == (33, True)
    assert count_plans(redis_client, keys, count=4) == (33, True)
    only_runs = top_plans(redis_client, keys, 100, prefix="run-")
    assert len(only_runs.plans) == 31
    assert total_cost_usd(redis_client, keys, prefix="run-") == sum(costs.values()) - 100.0
    assert total_cost_usd(redis_client, keys, prefix="run-*") == 6.0

    capped = top_plans(redis_client, keys, 5, cap=10, count=4)
    assert (capped.examined, capped.complete, len(capped.plans)) == (10, False, 5)
    assert count_plans(redis_client, keys, cap=10) == (10, False)
    with pytest.raises(ValueError, match="limit must be positive"):
        top_plans(redis_client, keys, 0)


def write_like_an_old_emitter(
    client: redis.Redis | redis.client.Pipeline, keys: Keys, plan_id: str, cost: float
) -> None:
    """The fields an emitter before the per-plan hashes wrote, as its script wrote them."""
    client.hincrby(keys.legacy_live(COST), f"plan={plan_id}|count", 1)
    client.hincrbyfloat(keys.legacy_live(COST), f"plan={plan_id}|sum", cost)
    client.hincrby(keys.legacy_live("plan.decisions_count"), f"plan={plan_id}|count", 2)
    client.hincrbyfloat(keys.legacy_live("plan.decisions_count"), f"plan={plan_id}|sum", 2)


def test_old_layout_fields_count_for_budgets_and_move_into_plan_hashes(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    # A rolling upgrade: old and new emitters spend on the same plan.
    write_like_an_old_emitter(redis_client, keys, "shared", 0.5)
    write_like_an_old_emitter(redis_client, keys, "old-only", 0.25)
    emitter = make_emitter(redis_url, keys)
    emitter.record(spend("shared", 1.0))
    emitter.observe(MetricKey.TOOL_ERROR_RATE, 1, {"tool": "t", "outcome": "ok"})
    assert emitter.close()
    redis_client.hset(keys.legacy_live(COST), "not-ours|sum", "9")  # a field this code never wrote

    # Before the move: budgets see both layouts; fleet reads ignore the old fields.
    assert plan_cost_usd(redis_client, keys, "shared") == pytest.approx(1.5)
    assert plan_cost_usd(redis_client, keys, "old-only") == pytest.approx(0.25)
    fleet = {s.key.value for s in read_live(redis_client, keys)}
    assert fleet == {"actor.token_usage", "tool.error_rate", "llm.latency_ms", "llm.cost_usd"}
    assert legacy_plan_fields(redis_client, keys) == 9

    assert migrate_legacy_plan_fields(redis_client, keys, ttl_s=500, count=2) == 8
    assert migrate_legacy_plan_fields(redis_client, keys) == 0  # safe to run again
    assert legacy_plan_fields(redis_client, keys) == 1
    assert redis_client.hgetall(keys.legacy_live(COST)) == {b"not-ours|sum": b"9"}
    assert not redis_client.exists(keys.legacy_live("plan.decisions_count"))

    # After: the same answers, now from the plans' own expiring hashes.
    assert plan_cost_usd(redis_client, keys, "shared") == pytest.approx(1.5)
    assert plan_cost_usd(redis_client, keys, "old-only") == pytest.approx(0.25)
    shared = read_plan(redis_client, keys, "shared")
    assert shared is not None
    assert (shared.priced_calls, shared.decisions) == (2, 2)
    assert 0 < redis_client.ttl(keys.plan("old-only")) <= 500
    # The new emitter's own write set the plan's TTL; the move refreshed it.
    assert 0 < redis_client.ttl(keys.plan("shared")) <= 500


PLANS_AT_SCALE = 50_000


@pytest.mark.slow
def test_fifty_thousand_plans_stay_bounded_everywhere(
    redis_url: str,
    keys: Keys,
    redis_client: redis.Redis,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The figures in docs/reference/observability.md and docs/worker.md come from here
    (run with -s to see them); the assertions are the behaviour, not the timings."""
    emitter = make_emitter(redis_url, keys)
    try:
        for i in range(PLANS_AT_SCALE):
            emitter.record(spend(f"plan-{i:05d}", (i + 1) / 1000))
            emitter.observe(MetricKey.PLAN_DECISIONS_COUNT, 1, {"plan": f"plan-{i:05d}"})
            if i % 10_000 == 9_999:
                assert emitter.flush(60)
        assert emitter.close(60)
        assert emitter.stats.sent == 2 * PLANS_AT_SCALE

        plan_keys = [k for k in redis_client.scan_iter(match=keys.plan_pattern, count=1000)]
        assert len(set(plan_keys)) == PLANS_AT_SCALE
        pipe = redis_client.pipeline(transaction=False)
        for key in plan_keys:
            pipe.ttl(key)
            pipe.memory_usage(key, samples=0)
        answers = pipe.execute()
        ttls, sizes = answers[::2], answers[1::2]
        assert all(0 < ttl <= PLAN_TTL_S for ttl in ttls)  # every plan key expires
        plan_bytes = sum(sizes)

        port = free_port()
        worker = Worker(WorkerSettings(redis_url, database_url, namespace=keys.namespace))
        server = serve(f"127.0.0.1:{port}", worker, redis_client)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as got:
                scrape = got.read()
        finally:
            server.shutdown()
        assert b"plan=" not in scrape

        where = ["--redis-url", redis_url, "--namespace", keys.namespace]
        started = time.perf_counter()
        assert main(["metrics", *where]) == 0
        default_s = time.perf_counter() - started
        out = capsys.readouterr().out
        assert out.splitlines()[-1] == f"{PLANS_AT_SCALE:,} live plans; use --plan ID or --top N"
        assert len(out.splitlines()) < 10
        assert main(["metrics", *where, "--json"]) == 0
        json_bytes = len(capsys.readouterr().out)

        started = time.perf_counter()
        assert main(["metrics", *where, "--top", "5"]) == 0
        top_s = time.perf_counter() - started
        _, rows, _ = read_table(capsys.readouterr().out)
        assert [row[:2] for row in rows] == [
            [f"plan-{i:05d}", render.format_usd((i + 1) / 1000)]
            for i in range(PLANS_AT_SCALE - 1, 49_994, -1)
        ]
        started = time.perf_counter()
        assert main(["metrics", *where, "--plan", "plan-12345"]) == 0
        plan_s = time.perf_counter() - started
        assert "plan=plan-12345" in capsys.readouterr().out

        # The same counters as the old layout held them, then moved by the migration.
        pipe = redis_client.pipeline(transaction=False)
        for i in range(PLANS_AT_SCALE):
            write_like_an_old_emitter(pipe, keys, f"plan-{i:05d}", (i + 1) / 1000)
        pipe.execute()
        old_bytes = sum(
            redis_client.memory_usage(keys.legacy_live(name), samples=0) or 0
            for name in (COST, "plan.decisions_count")
        )
        started = time.perf_counter()
        assert migrate_legacy_plan_fields(redis_client, keys) == 4 * PLANS_AT_SCALE
        migrate_s = time.perf_counter() - started
        assert legacy_plan_fields(redis_client, keys) == 0
        assert plan_cost_usd(redis_client, keys, "plan-49999") == pytest.approx(2 * 50.0)

        with capsys.disabled():
            print(
                f"\nold layout {old_bytes / 1e6:.2f} MB, moved in {migrate_s:.2f} s; "
                f"{PLANS_AT_SCALE} plans: plan hashes {plan_bytes / 1e6:.2f} MB "
                f"({plan_bytes / PLANS_AT_SCALE:.0f} B each, all expiring); "
                f"/metrics {len(scrape) / 1e3:.1f} kB; metrics --json {json_bytes} B; "
                f"CLI in-process: default {default_s:.2f} s, --top 5 {top_s:.2f} s, "
                f"--plan {plan_s * 1000:.1f} ms"
            )
    finally:
        doomed = list(redis_client.scan_iter(match=keys.plan_pattern, count=5000))
        for start in range(0, len(doomed), 5000):
            redis_client.unlink(*doomed[start : start + 5000])


def test_a_plan_budget_is_recorded_on_its_hash_and_read_beside_its_cost(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    emitter = make_emitter(redis_url, keys)
    with hooks.plan("capped", emitter=emitter, budget_usd=2.5):
        emitter.record(spend("capped", 0.75))
    with hooks.plan("free", emitter=emitter):
        emitter.record(spend("free", 0.5))
    # A second producer sets a larger budget for the same plan: the largest is read.
    other = keys.for_producer("second")
    second = make_emitter(redis_url, keys, producer="second")
    with hooks.plan("shared", emitter=emitter, budget_usd=1.0):
        emitter.record(spend("shared", 0.25))
    with hooks.plan("shared", emitter=second, budget_usd=3.0):
        pass
    assert emitter.close() and second.close()
    redis_client.sadd(keys.producers, "second")  # as a worker does when it reads its stream

    assert redis_client.hget(keys.plan("capped"), "plan.budget_usd||value") == b"2.5"
    assert redis_client.hget(other.plan("shared"), "plan.budget_usd||value") == b"3.0"
    figures = {p: read_plan(redis_client, keys, p) for p in ("capped", "free", "shared")}
    assert {p: (f.cost_usd, f.budget_usd) for p, f in figures.items() if f} == {
        "capped": (0.75, 2.5),
        "free": (0.5, None),
        "shared": (0.25, 3.0),
    }
    top = {p.plan_id: p.budget_usd for p in top_plans(redis_client, keys, 10).plans}
    assert top == {"capped": 2.5, "free": None, "shared": 3.0}

    for bad in (-1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="budget_usd must be a finite number of USD"):
            hooks.plan("bad", emitter=emitter, budget_usd=bad)  # type: ignore[arg-type]
