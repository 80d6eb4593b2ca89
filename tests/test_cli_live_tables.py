# ruff: noqa: E501  (the snapshots are lines of 200-column tables)
"""The tables and JSON of the commands that read Redis (metrics and its --plan/--top,
dlq list, groups list) and the JSON objects of dlq replay/delete/purge, groups drop and
worker --burst: each table against the JSON of the same call and against Redis,
snapshots at 80 and 200 columns, the empty lists, truthful footers, NO_COLOR."""

from __future__ import annotations

import json

import pytest
import redis

from fleettrace import LLMTrace, MetricKey
from fleettrace.keys import Keys
from fleettrace.live import read_live
from fleettrace_worker.cli import main
from fleettrace_worker.cli.dlq import LIST_COLUMNS as DLQ_COLUMNS
from fleettrace_worker.cli.groups import LIST_COLUMNS as GROUP_COLUMNS
from fleettrace_worker.cli.metrics import PLAN_COLUMNS, SERIES_COLUMNS
from fleettrace_worker.keys import LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import DeadLetter
from tests.emitting import make_emitter
from tests.factories import add_traces, numbered_trace
from tests.tables import expected_cells, listing, narrow_and_wide, read_table, run, titles
from tests.worker_helpers import fleettrace, migrated, trace_rows, worker_env


def _where(redis_url: str, keys: Keys) -> tuple[str, ...]:
    return ("--redis-url", redis_url, "--namespace", keys.namespace)


# metrics ----------------------------------------------------------------------------


@pytest.fixture
def live(redis_url: str, keys: Keys) -> Keys:
    emitter = make_emitter(redis_url, keys)
    for value in (0.2, 0.21, 0.25, 0.3, 12.5):
        emitter.observe(MetricKey.ACTOR_INVOCATION_DURATION_MS, value, {"actor": "coder"})
    for i in (2, 10, 1):
        emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, 10.703935 * i, {"tool": f"t-{i}"})
    emitter.observe(MetricKey.CONTEXT_TOKENS_USED, 1234)
    for plan, cost in (("plan-2", 0.5), ("plan-10", 2.25), ("plan-1", 0.004)):
        emitter.record(LLMTrace(provider="openai", model="gpt-4o", plan_id=plan, cost_usd=cost))
    # A plan with a decision and no priced call: live counters, an unknown cost.
    emitter.record(LLMTrace(provider="acme", model="x", plan_id="plan-3", cost_usd=None))
    emitter.observe(MetricKey.PLAN_DECISIONS_COUNT, 1, {"plan": "plan-3"})
    assert emitter.close()
    return keys


def test_metrics_table_json_and_redis_agree(
    capsys: pytest.CaptureFixture[str], live: Keys, redis_url: str, redis_client: redis.Redis
) -> None:
    where = _where(redis_url, live)
    items = listing(capsys, "metrics", *where)["items"]
    header, rows, footer = read_table(run(capsys, "metrics", *where))
    assert header == titles(SERIES_COLUMNS)
    assert rows == expected_cells(SERIES_COLUMNS, items)
    assert footer == ["4 live plans; use --plan ID or --top N"]
    from_redis = {(s.key.value, s.labels): s for s in read_live(redis_client, live)}
    assert len(items) == len(from_redis)
    for item in items:
        series = from_redis[(item["key"], tuple(item["labels"].items()))]
        assert (item["count"], item["p50"]) == (series.count, series.p50)
    # Natural order: t-1, t-2, t-10; durations to 3 significant digits.
    tools = [row for row in rows if row[0] == "tool.invocation_duration_ms"]
    assert [row[1] for row in tools] == ["tool=t-1", "tool=t-2", "tool=t-10"]
    assert [row[4] for row in tools] == ["10.7", "21.4", "107"]


def test_metrics_plans_table_json_and_redis_agree(
    capsys: pytest.CaptureFixture[str], live: Keys, redis_url: str, redis_client: redis.Redis
) -> None:
    where = _where(redis_url, live)
    items = listing(capsys, "metrics", *where, "--top", "3")["items"]
    header, rows, footer = read_table(run(capsys, "metrics", *where, "--top", "3"))
    assert header == titles(PLAN_COLUMNS)
    assert rows == expected_cells(PLAN_COLUMNS, items)
    assert [row[:2] for row in rows] == [
        ["plan-10", "2.25"],
        ["plan-2", "0.50"],
        ["plan-1", "0.00400"],
    ]
    assert footer == ["showing 3 of 4 live plans"]
    for item in items:
        stored = redis_client.hgetall(live.plan(item["plan"]))
        assert stored  # each plan row is a plan hash
    # A plan whose calls were never priced: cost unknown, never 0.
    [unpriced] = [
        i
        for i in listing(capsys, "metrics", *where, "--top", "4")["items"]
        if i["plan"] == "plan-3"
    ]
    assert (unpriced["cost_usd"], unpriced["priced_calls"]) == (None, 0)
    _, rows, _ = read_table(run(capsys, "metrics", *where, "--top", "4", "--sort", "plan"))
    assert [row[:2] for row in rows] == [
        ["plan-1", "0.00400"],
        ["plan-2", "0.50"],
        ["plan-3", "unpriced"],
        ["plan-10", "2.25"],
    ]
    plan = listing(capsys, "metrics", *where, "--plan", "plan-10")["items"]
    _, rows, _ = read_table(run(capsys, "metrics", *where, "--plan", "plan-10"))
    assert rows == expected_cells(SERIES_COLUMNS, plan)


def test_metrics_snapshots_at_80_and_200_columns(
    capsys: pytest.CaptureFixture[str],
    live: Keys,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    where = (*_where(redis_url, live), "--key", "tool.invocation_duration_ms")
    narrow, wide = narrow_and_wide(capsys, monkeypatch, "metrics", *where)
    # The percentiles: within 2 % of 10.7, 21.4 and 107, the values recorded.
    title = f"live counters of namespace {live.namespace!r}"
    assert narrow.splitlines()[0].strip() == wide.splitlines()[0].strip() == title
    assert narrow.splitlines()[1:] == [
        "KEY                          LABELS   UNIT  COUNT   SUM  VALUE   P50   P95   P99",
        "─" * 80,
        "tool.invocation_duration_ms  tool=t…  ms        1  10.7      -  10.8  10.8  10.8",
        "tool.invocation_duration_ms  tool=t…  ms        1  21.4      -  21.3  21.3  21.3",
        "tool.invocation_duration_ms  tool=t…  ms        1   107      -   105   105   105",
    ]
    assert wide.splitlines()[1:] == [
        "KEY                          LABELS     UNIT  COUNT   SUM  VALUE   P50   P95   P99",
        "─" * 82,
        "tool.invocation_duration_ms  tool=t-1   ms        1  10.7      -  10.8  10.8  10.8",
        "tool.invocation_duration_ms  tool=t-2   ms        1  21.4      -  21.3  21.3  21.3",
        "tool.invocation_duration_ms  tool=t-10  ms        1   107      -   105   105   105",
    ]


# dlq --------------------------------------------------------------------------------

#: Dead letters made at fixed times (their ids), so the snapshots hold.
BASE_MS = 1_764_583_815_250


@pytest.fixture
def dead(redis_client: redis.Redis, keys: Keys) -> list[str]:
    dlq = keys.dead_letters(PERSIST_GROUP)
    ids = []
    for i in range(5):
        letter = DeadLetter(
            f"record: prompt_tokens: Input should be greater than or equal to 0 (#{i})",
            keys.traces,
            f"{BASE_MS - 10}-{i}",
            "worker-1",
            "b" * 32,
            "t",
            i,
            b'{"provider": "openai", "model": "gpt-4o", "prompt_tokens": -5}',
        )
        ids.append(redis_client.xadd(dlq, letter.to_fields(), id=f"{BASE_MS + i}-0").decode())  # type: ignore[arg-type]
    entry = DeadLetter.for_entry(keys.traces, "1-0", {b"v": b"9"}, "worker-2", "unknown version 9")
    ids.append(redis_client.xadd(dlq, entry.to_fields(), id=f"{BASE_MS + 5}-0").decode())  # type: ignore[arg-type]
    return ids


def test_dlq_list_table_json_and_redis_agree_with_a_truthful_footer(
    capsys: pytest.CaptureFixture[str],
    dead: list[str],
    keys: Keys,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    where = ("dlq", "list", *_where(redis_url, keys), "--limit", "3")
    page = listing(capsys, *where)
    assert [i["id"] for i in page["items"]] == dead[:3]
    assert page["next_cursor"] == dead[2]
    header, rows, footer = read_table(run(capsys, *where, "--utc"))
    assert header == titles(DLQ_COLUMNS, utc=True)
    assert rows == expected_cells(DLQ_COLUMNS, page["items"], utc=True)
    assert rows[0][1] == "2025-12-01 10:10:15"
    assert footer == [
        f"showing 3 of 6 dead letters in group persist of namespace {keys.namespace!r}; "
        f"more: add --cursor {dead[2]}"
    ]
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 6
    rest = listing(capsys, *where, "--cursor", dead[2])
    assert [i["id"] for i in rest["items"]] == dead[3:]
    assert rest["next_cursor"] is None
    assert rest["items"][-1]["fields"] == {"v": "9"}
    assert rest["items"][-1]["record"] is None
    _, _, footer = read_table(run(capsys, *where, "--reason", "version"))
    assert footer == [
        "showing 1 dead letter with a reason containing 'version'; 6 in group persist of "
        f"namespace {keys.namespace!r}"
    ]
    lines = run(capsys, "dlq", "list", *_where(redis_url, keys), "--jsonl").splitlines()
    assert [json.loads(line)["id"] for line in lines] == dead


def test_dlq_list_snapshots_at_80_and_200_columns(
    capsys: pytest.CaptureFixture[str],
    dead: list[str],
    keys: Keys,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    where = ("dlq", "list", *_where(redis_url, keys), "--limit", "2", "--utc")
    narrow, wide = narrow_and_wide(capsys, monkeypatch, *where)
    assert narrow.splitlines() == [
        "ID               MADE (UTC)           REASON                RECORD",
        "─" * 80,
        '1764583815250-0  2025-12-01 10:10:15  record: prompt_toke…  {"provider": "opena…',
        '1764583815251-0  2025-12-01 10:10:15  record: prompt_toke…  {"provider": "opena…',
        # The footer wraps at the terminal's width, between words.
        f"showing 2 of 6 dead letters in group persist of namespace {keys.namespace!r}; ",
        "more: add --cursor 1764583815251-0",
    ]
    assert wide.splitlines() == [
        "ID               MADE (UTC)           REASON                                                                  RECORD",
        "─" * 172,
        '1764583815250-0  2025-12-01 10:10:15  record: prompt_tokens: Input should be greater than or equal to 0 (#0)  {"provider": "openai", "model": "gpt-4o", "prompt_tokens": -5}',
        '1764583815251-0  2025-12-01 10:10:15  record: prompt_tokens: Input should be greater than or equal to 0 (#1)  {"provider": "openai", "model": "gpt-4o", "prompt_tokens": -5}',
        f"showing 2 of 6 dead letters in group persist of namespace {keys.namespace!r}; "
        "more: add --cursor 1764583815251-0",
    ]


def test_dlq_replay_delete_and_purge_print_one_json_object(
    capsys: pytest.CaptureFixture[str],
    dead: list[str],
    keys: Keys,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    where = _where(redis_url, keys)
    assert main(["dlq", "replay", *where, "--id", dead[5], "1-1", "--json"]) == 1
    replay = json.loads(capsys.readouterr().out)
    assert (replay["group"], replay["replayed"], replay["not_found"]) == ("persist", [], ["1-1"])
    [kept] = replay["kept"]
    assert kept["id"] == dead[5] and kept["reason"].startswith("entry still fails: ")
    deleted = json.loads(run(capsys, "dlq", "delete", *where, "--id", dead[0], "--yes", "--json"))
    assert deleted == {
        "group": "persist",
        "namespace": keys.namespace,
        "deleted": [dead[0]],
        "not_found": [],
    }
    purged = json.loads(
        run(capsys, "dlq", "purge", *where, "--older-than", "1d", "--yes", "--json")
    )
    assert (purged["group"], purged["purged"]) == ("persist", 5)
    assert redis_client.xlen(keys.dead_letters(PERSIST_GROUP)) == 0
    assert listing(capsys, "dlq", "list", *where)["items"] == []
    assert run(capsys, "dlq", "list", *where) == (
        f"no dead letters in group persist of namespace {keys.namespace!r}\n"
    )


# groups -----------------------------------------------------------------------------


def test_groups_list_table_json_and_redis_agree(
    capsys: pytest.CaptureFixture[str], keys: Keys, redis_url: str, redis_client: redis.Redis
) -> None:
    where = _where(redis_url, keys)
    assert listing(capsys, "groups", "list", *where) == {
        "items": [],
        "next_cursor": None,
        "namespace": keys.namespace,
    }
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(4)])
    Consumer(redis_client, keys, PERSIST_GROUP, "c1").ensure_groups()
    Consumer(redis_client, keys, LANGSMITH_GROUP, "c2").ensure_groups()
    items = listing(capsys, "groups", "list", *where)["items"]
    header, rows, footer = read_table(run(capsys, "groups", "list", *where))
    assert header == titles(GROUP_COLUMNS)
    # Every cell but the age of the oldest entry, which grows between the two calls.
    age = [c.key for c in GROUP_COLUMNS].index("age_s")
    expected = expected_cells(GROUP_COLUMNS, items)
    assert [r[:age] + r[age + 1 :] for r in rows] == [r[:age] + r[age + 1 :] for r in expected]
    assert all(float(row[age]) > 0 for row in rows)
    info = {
        (stream, g["name"].decode()): g
        for stream in {i["stream"] for i in items}
        for g in redis_client.xinfo_groups(stream)
    }
    assert {(i["stream"], i["group"]) for i in items} == set(info)
    for item in items:
        assert item["lag"] == info[(item["stream"], item["group"])]["lag"]
    streams = len({i["stream"] for i in items})
    assert footer == [
        f"{len(items)} consumer groups on {streams} stream{'s' if streams > 1 else ''}; 0 behind"
    ]
    assert [row[1] for row in rows if row[0] == keys.traces] == ["langsmith", "persist"]

    dropped = json.loads(
        run(capsys, "groups", "drop", LANGSMITH_GROUP, *where, "--yes", "--force", "--json")
    )
    assert dropped["group"] == LANGSMITH_GROUP and keys.traces in dropped["dropped_from"]
    assert main(["groups", "drop", "nope", *where, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["refused"].startswith("no consumer group 'nope'")


# worker --burst ---------------------------------------------------------------------


@pytest.mark.slow
def test_worker_burst_json_summary_agrees_with_the_database(
    redis_url: str, redis_client: redis.Redis, keys: Keys, database_url: str
) -> None:
    db = migrated(database_url)
    add_traces(redis_client, keys, [numbered_trace(i) for i in range(7)])
    redis_client.xadd(keys.traces, {b"v": b"1", b"k": b"x"})
    done = fleettrace(
        "worker", "--burst", "--only", "persist", "--json", env=worker_env(redis_url, db, keys)
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["namespace"] == keys.namespace and summary["exit_code"] == 0
    [group] = summary["groups"]
    assert (group["group"], group["records"], group["dead_letters"]) == ("persist", 7, 1)
    assert trace_rows(db) == 7


# colour -----------------------------------------------------------------------------


def test_no_color_is_respected_by_the_commands(
    live: Keys, redis_url: str, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        **worker_env(redis_url, "postgresql://unused@127.0.0.1:1/none", live),
        "FORCE_COLOR": "1",
    }
    env.pop("NO_COLOR", None)
    coloured = fleettrace("metrics", "--top", "4", env=env)
    assert "\x1b[2m" in coloured.stdout  # the unpriced cost dimmed
    plain = fleettrace("metrics", "--top", "4", env={**env, "NO_COLOR": "1"})
    assert plain.returncode == 0
    assert "\x1b[3" not in plain.stdout and "\x1b[9" not in plain.stdout
    piped = fleettrace(
        "metrics", "--top", "4", env={k: v for k, v in env.items() if k != "FORCE_COLOR"}
    )
    assert "\x1b[" not in piped.stdout
