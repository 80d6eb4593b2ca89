"""``fleettrace metrics`` run for real against the machine's Redis."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from fleettrace import LLMTrace, MetricKey
from fleettrace.keys import Keys
from fleettrace.live import LiveSeries
from fleettrace.sketch import FineBucket
from fleettrace_worker.cli import main, metrics
from tests.emitting import make_emitter
from tests.servers import free_port
from tests.tables import read_table

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def recorded(redis_url: str, keys: Keys) -> Keys:
    emitter = make_emitter(redis_url, keys)
    for value in (2.0, 4.0, 30.0, 70.0):
        emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, value, {"tool": "web,search"})
    emitter.observe(MetricKey.CONTEXT_TOKENS_USED, 321)
    emitter.record(LLMTrace(provider="openai", model="gpt-4o", prompt_tokens=1000, plan_id="p1"))
    assert emitter.close()
    return keys


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["metrics", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table(recorded: Keys, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--redis-url", redis_url, "--namespace", recorded.namespace)
    assert (code, err) == (0, "")
    header, rows, footer = read_table(out)
    assert header == ["KEY", "LABELS", "UNIT", "COUNT", "SUM", "VALUE", "P50", "P95", "P99"]
    # No line per plan: one summary line instead.
    assert footer == ["1 live plan; use --plan ID or --top N"]
    assert not any(row[0].startswith("plan.cost_usd") for row in rows)
    by_series = {tuple(row[:2]): row[2:] for row in rows}
    assert by_series[("context.tokens_used", "-")] == ["tokens", "1", "-", "321", "-", "-", "-"]
    unit, count, total, value, *quantiles = by_series[
        ("tool.invocation_duration_ms", "tool=web,search")
    ]
    assert (unit, count, total, value) == ("ms", "4", "106", "-")
    # Nearest rank of 2, 4, 30, 70: p50 is the 2nd value, p95 and p99 the 4th (2 %).
    assert [float(q) for q in quantiles] == pytest.approx([4.0, 70.0, 70.0], rel=0.02)
    assert by_series[("actor.token_usage", "provider=openai,model=gpt-4o,token_type=prompt")][
        :3
    ] == ["tokens", "1", "1,000"]
    # Natural order: by key, then by labels.
    keys = [row[0] for row in rows]
    assert keys == sorted(keys)


def test_json_and_key_filter(
    recorded: Keys,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETTRACE_REDIS_URL", redis_url)
    monkeypatch.setenv("FLEETTRACE_NAMESPACE", recorded.namespace)
    code, out, _ = run(capsys, "--json", "--key", "tool.invocation_duration_ms")
    assert code == 0
    [series] = json.loads(out)["items"]
    assert series["key"] == "tool.invocation_duration_ms"
    assert series["type"] == "histogram"
    assert series["unit"] == "ms"
    assert series["labels"] == {"tool": "web,search"}
    assert (series["count"], series["sum"], series["value"]) == (4, 106.0, None)
    assert series["buckets"][-1] == {"le": "+Inf", "count": 0}
    counts = {b["le"]: b["count"] for b in series["buckets"]}
    assert (counts[2.5], counts[5.0], counts[10.0], counts[50.0], counts[100.0]) == (1, 1, 0, 1, 1)
    # Nearest ranks 2, 4 and 4 of 4, within 2 %.
    assert [series["p50"], series["p95"], series["p99"]] == pytest.approx(
        [4.0, 70.0, 70.0], rel=0.02
    )


def test_empty_namespace(keys: Keys, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--redis-url", redis_url, "--namespace", keys.namespace)
    assert (code, out) == (0, f"no live counters yet in namespace {keys.namespace!r}\n")
    code, out, _ = run(capsys, "--redis-url", redis_url, "--namespace", keys.namespace, "--json")
    assert (code, json.loads(out)) == (
        0,
        {"items": [], "next_cursor": None, "namespace": keys.namespace},
    )
    code, out, _ = run(
        capsys, "--redis-url", redis_url, "--namespace", keys.namespace, "--json", "--top", "3"
    )
    assert (code, json.loads(out)) == (
        0,
        {"items": [], "next_cursor": None, "namespace": keys.namespace},
    )
    where = ("--redis-url", redis_url, "--namespace", keys.namespace)
    nothing = f"no live plans in namespace {keys.namespace!r}\n"
    assert run(capsys, *where, "--key", "plan.cost_usd")[:2] == (0, nothing)
    assert run(capsys, *where, "--top", "3")[:2] == (0, nothing)


def test_unreachable_redis_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert code == 1
    assert out == ""
    assert err.startswith("fleettrace metrics: reading the live counters: ")
    assert "Connection refused" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--watch", "0"], "must be a positive number of seconds"),
        (["--watch", "soon"], "not a number of seconds"),
        (["--key", "nope"], "invalid choice: 'nope'"),
        (["--top", "0"], "argument --top: must be at least 1, got 0"),
        (["--top", "many"], "not a whole number: 'many'"),
        (["--top", "3", "--plan", "p"], "not allowed with argument"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["metrics", *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_namespace_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--namespace", "a b")
    assert code == 2
    assert "namespace 'a b'" in err


@pytest.mark.slow
def test_watch_refreshes_until_interrupted(recorded: Keys, redis_url: str) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleettrace_worker.cli",
            "metrics",
            "--redis-url",
            redis_url,
            "--namespace",
            recorded.namespace,
            "--watch",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    headers = 0
    deadline = time.monotonic() + 30
    while headers < 2 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("KEY "):
            headers += 1
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert headers == 2
    assert process.returncode == 130
    assert "Traceback" not in err


def test_watch_on_a_terminal_clears_the_screen_between_tables(
    recorded: Keys,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("fleettrace_worker.cli.metrics.time.sleep", sleep)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run(
        capsys, "--redis-url", redis_url, "--namespace", recorded.namespace, "--watch"
    )
    assert code == 130
    assert sleeps == [2.0, 2.0]
    assert out.count("\x1b[H\x1b[2J") == 2
    assert out.count("tool.invocation_duration_ms") == 2


def test_one_plan_and_the_top_plans(
    redis_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    emitter = make_emitter(redis_url, keys)
    for i, cost in enumerate((0.5, 3.0, 0.25, 2.0, 1.0, 4.0, 0.75)):
        emitter.record(
            LLMTrace(provider="openai", model="gpt-4o", plan_id=f"plan-{i}", cost_usd=cost)
        )
    emitter.observe(MetricKey.PLAN_DECISIONS_COUNT, 1, {"plan": "plan-5"})
    emitter.observe(MetricKey.PLAN_CHILD_PLANS_COUNT, 1, {"plan": "plan-5"})
    assert emitter.close()
    where = ("--redis-url", redis_url, "--namespace", keys.namespace)

    code, out, err = run(capsys, *where, "--top", "5")
    assert (code, err) == (0, "")
    header, rows, footer = read_table(out)
    assert header == ["PLAN", "COST (USD)", "PRICED CALLS", "DECISIONS", "CHILD PLANS"]
    assert rows == [
        ["plan-5", "4.00", "1", "1", "1"],
        ["plan-1", "3.00", "1", "0", "0"],
        ["plan-3", "2.00", "1", "0", "0"],
        ["plan-4", "1.00", "1", "0", "0"],
        ["plan-6", "0.75", "1", "0", "0"],
    ]
    assert footer == ["showing 5 of 7 live plans"]
    code, out, _ = run(capsys, *where, "--top", "2", "--json")
    assert json.loads(out) == {
        "items": [
            {
                "plan": "plan-5",
                "cost_usd": 4.0,
                "priced_calls": 1,
                "decisions": 1,
                "child_plans": 1,
            },
            {
                "plan": "plan-1",
                "cost_usd": 3.0,
                "priced_calls": 1,
                "decisions": 0,
                "child_plans": 0,
            },
        ],
        "next_cursor": None,
        "namespace": keys.namespace,
    }
    code, out, _ = run(capsys, *where, "--top", "3", "--sort", "plan")
    assert [row[0] for row in read_table(out)[1]] == ["plan-1", "plan-3", "plan-5"]

    code, out, _ = run(capsys, *where, "--plan", "plan-5")
    _, rows, _ = read_table(out)
    assert rows == [
        ["plan.child_plans_count", "plan=plan-5", "1", "1", "1", "-", "-", "-", "-"],
        ["plan.cost_usd", "plan=plan-5", "USD", "1", "4.00", "-", "-", "-", "-"],
        ["plan.decisions_count", "plan=plan-5", "1", "1", "1", "-", "-", "-", "-"],
    ]
    code, out, _ = run(capsys, *where, "--plan", "plan-5", "--key", "plan.cost_usd", "--json")
    [series] = json.loads(out)["items"]
    assert (series["key"], series["labels"], series["sum"]) == (
        "plan.cost_usd",
        {"plan": "plan-5"},
        4.0,
    )
    code, out, _ = run(capsys, *where, "--plan", "nope")
    assert (code, out) == (
        0,
        "no live counters for plan 'nope' (never recorded, or expired) "
        f"in namespace {keys.namespace!r}\n",
    )
    code, out, _ = run(capsys, *where, "--key", "plan.cost_usd")
    assert (code, out) == (0, "7 live plans; use --plan ID or --top N\n")
    code, out, _ = run(capsys, *where, "--json")
    assert sorted(s["key"] for s in json.loads(out)["items"]) == [
        *["actor.token_usage"] * 2,
        "llm.cost_usd",
        "llm.latency_ms",
    ]
    code, out, _ = run(capsys, *where, "--key", "context.tokens_used")
    assert (code, out) == (0, f"no live counters yet in namespace {keys.namespace!r}\n")
    code, out, _ = run(capsys, *where, "--key", "plan.decisions_count", "--json")
    assert (code, json.loads(out)) == (
        0,
        {"items": [], "next_cursor": None, "namespace": keys.namespace},
    )


def test_old_layout_is_reported_and_moved(
    keys: Keys, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_client.hincrby(keys.legacy_live("plan.cost_usd"), "plan=old|count", 1)
    redis_client.hincrbyfloat(keys.legacy_live("plan.cost_usd"), "plan=old|sum", 0.5)
    where = ("--redis-url", redis_url, "--namespace", keys.namespace)
    code, out, _ = run(capsys, *where)
    assert out.splitlines() == [
        f"no live counters yet in namespace {keys.namespace!r}",
        "0 live plans; use --plan ID or --top N",
        f"2 per-plan fields in the old layout ({keys.prefix}:live:plan.*); "
        "move them with --migrate-plans",
    ]
    code, out, _ = run(capsys, *where, "--migrate-plans")
    assert (code, out) == (
        0,
        f"moved 2 per-plan fields from {keys.prefix}:live:plan.* into plan hashes\n",
    )
    code, out, _ = run(capsys, *where, "--top", "1")
    assert read_table(out)[1] == [["old", "0.50", "1", "0", "0"]]
    code, out, _ = run(capsys, *where)
    assert out.splitlines()[-1] == "1 live plan; use --plan ID or --top N"


@pytest.mark.parametrize(
    ("argv", "doing"),
    [
        (["--top", "3"], "reading the live plans"),
        (["--plan", "p"], "reading a plan's counters"),
        (["--migrate-plans"], "moving the per-plan counters"),
    ],
)
def test_plan_reads_without_redis_are_one_line_and_exit_1(
    argv: list[str], doing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--redis-url", f"redis://127.0.0.1:{free_port()}/0", *argv)
    assert (code, out) == (1, "")
    assert err.startswith(f"fleettrace metrics: {doing}: ")
    assert err.count("\n") == 1


def test_observations_of_older_emitters_are_named_outside_the_percentiles(
    recorded: Keys, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "tool.invocation_duration_ms"
    # What an emitter before the sketches wrote for the same series: le= buckets.
    redis_client.hincrby(recorded.live(key), "tool=web%2Csearch|le=5.0", 2)
    redis_client.hincrby(recorded.live(key), "tool=web%2Csearch|count", 2)
    where = ("--redis-url", redis_url, "--namespace", recorded.namespace, "--key", key)
    code, out, _ = run(capsys, *where)
    assert code == 0
    assert out.splitlines()[-1] == (
        "percentiles leave out 2 observations that emitters older than the sketches "
        "recorded (counted in count and sum)"
    )
    code, out, _ = run(capsys, *where, "--json")
    [series] = json.loads(out)["items"]
    assert (series["count"], series["unsketched"]) == (6, 2)
    counts = {b["le"]: b["count"] for b in series["buckets"]}
    assert counts[5.0] == 3
    assert [series["p50"], series["p99"]] == pytest.approx([4.0, 70.0], rel=0.02)


def test_json_in_the_default_order_is_the_general_paths_text_byte_for_byte(capsys) -> None:
    """``--json`` without ``--sort`` writes the series straight from them; the text is
    the one the general path (any --sort) writes for the same order."""
    actor, tokens = MetricKey.ACTOR_INVOCATION_DURATION_MS, MetricKey.ACTOR_TOKEN_USAGE
    bounds = (*actor.spec.buckets, math.inf)
    buckets = tuple((bound, i % 3) for i, bound in enumerate(bounds))
    series = [
        LiveSeries(tokens, (("provider", "openai"), ("model", "gpt-4o")), 5, 1e21),
        LiveSeries(actor, (("actor", "actor-10"),), 3, 912.5, buckets=buckets, p50=0.4),
        LiveSeries(actor, (("actor", "actor-9"),), 3, 0.1 + 0.2, buckets=buckets),
        LiveSeries(actor, (("actor", 'ünï "q"\\' + "x" * 300),), 1, 2.0, buckets=buckets),
        LiveSeries(actor, (), 2, 1.0, buckets=((-0.0, 1), (0.0, 1), (math.inf, 0)), p99=math.nan),
        LiveSeries(
            actor,
            (("actor", "fine"),),
            2,
            1.0,
            buckets=((5.0, 2), (math.inf, 0)),
            fine=(FineBucket(1, 3, 5.0, 2),),
            p50=4.9,
            p95=4.9,
            p99=4.9,
            unsketched=1,
        ),
        LiveSeries(MetricKey.CONTEXT_TOKENS_USED, (), 1, 0.0, value=-0.0),
        LiveSeries(MetricKey.CONTEXT_TOKENS_USED, (), 1, 0.0, value=None),
    ]
    keys = Keys("fast-json")
    texts = []
    for sort in (None, metrics.SERIES_ORDER):
        args = argparse.Namespace(json=True, jsonl=False, sort=sort, utc=False)
        metrics._series(args, keys, series, "none")
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]
    items = json.loads(texts[0])["items"]
    assert [i["labels"].get("actor") for i in items[:3]] == [None, "actor-9", "actor-10"]
    assert items[0]["p99"] is None and items[0]["buckets"][0]["le"] == -0.0
    metrics._series(argparse.Namespace(json=True, sort=None), keys, [], "none")
    assert json.loads(capsys.readouterr().out) == {
        "items": [],
        "next_cursor": None,
        "namespace": "fast-json",
    }
