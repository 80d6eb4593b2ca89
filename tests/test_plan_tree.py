"""The plan tree end to end, against the machine's Redis and PostgreSQL: a root plan
with two child plans, one of them recorded by another process from the root's token,
stored by the real worker (``fleettrace worker --burst``) and read back by
``fleettrace traces tree`` in the right shape with the right totals."""

from __future__ import annotations

import json
import multiprocessing
from typing import Any

import psycopg
import pytest
import redis

import fleettrace
from fleettrace import hooks
from fleettrace.emitter import Emitter
from fleettrace.keys import Keys
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.tree_queries import TreeQueries
from tests.emitting import emitter_figures, make_emitter
from tests.worker_helpers import fleettrace as run_cli
from tests.worker_helpers import migrated, scalar, start_worker, worker_env

pytestmark = pytest.mark.slow


def _remote_child(redis_url: str, namespace: str, token: str) -> None:
    """Another process: a child plan from the token, one call and one tool."""
    emitter = fleettrace.configure(redis_url, namespace, flush_interval_s=0.01)
    with hooks.plan("remote-child", parent=token), hooks.decision("r-1"), hooks.actor("r"):
        hooks.record_llm_call(
            "anthropic", "claude-3-5-haiku-latest", prompt_tokens=300,
            completion_tokens=30, cost_usd=0.004, latency_ms=40.0,
        )  # fmt: skip
        with hooks.tool("fetch"):
            pass
    assert emitter.close(10)


def _record_tree(emitter: Emitter, redis_url: str, namespace: str) -> str:
    with hooks.plan("trip", emitter=emitter) as root:
        with (
            hooks.phase("plan", emitter=emitter),
            hooks.decision("d-1", emitter=emitter),
            hooks.actor("planner", emitter=emitter),
        ):
            hooks.record_llm_call(
                "openai", "gpt-4o", emitter=emitter, prompt_tokens=100,
                completion_tokens=10, cost_usd=0.001, latency_ms=20.0,
            )  # fmt: skip
            with hooks.tool("search", emitter=emitter):
                pass
        with (
            hooks.plan("local-child", emitter=emitter),
            hooks.decision("c-1", emitter=emitter),
            hooks.actor("booker", emitter=emitter),
        ):
            hooks.record_llm_call(
                "openai", "gpt-4o-mini", emitter=emitter, prompt_tokens=200,
                completion_tokens=20, cost_usd=0.002, latency_ms=30.0,
            )  # fmt: skip
            hooks.record_llm_call(
                "custom", "in-house", emitter=emitter, prompt_tokens=None,
                completion_tokens=None, latency_ms=5.0,
            )  # fmt: skip
            with pytest.raises(RuntimeError), hooks.tool("book", emitter=emitter):
                raise RuntimeError("no seats")
        process = multiprocessing.get_context("spawn").Process(
            target=_remote_child, args=(redis_url, namespace, root.token())
        )
        process.start()
        process.join(120)
        assert process.exitcode == 0
    return "trip"


def _shape(node: dict[str, Any]) -> list[Any]:
    return [f"{node['kind']} {node['name']}", [_shape(c) for c in node["children"]]]


def test_a_plan_with_two_child_plans_reads_back_as_one_tree(
    redis_url: str, keys: Keys, database_url: str, redis_client: redis.Redis
) -> None:
    db = migrated(database_url)
    emitter = make_emitter(redis_url, keys)
    try:
        _record_tree(emitter, redis_url, keys.namespace)
        assert emitter.flush(30)
    finally:
        emitter.close()
    emitter_keys = emitter.keys  # both processes write as the same Redis user
    env = worker_env(redis_url, db, keys)
    worker = start_worker("--burst", "--only", PERSIST_GROUP, env=env)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err

    with psycopg.connect(db) as conn:
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in ("llm_traces", "tool_calls", "plans")
        }
    assert counts == {"llm_traces": 4, "tool_calls": 3, "plans": 3}
    # Records sent (by both processes) = rows stored + dead letters.
    samples = scalar(db, "SELECT count(*) FROM metric_samples")
    dead = redis_client.xlen(keys.dead_letters(PERSIST_GROUP))
    sent = emitter_figures(redis_client, emitter_keys)["records"]
    assert sent == sum(counts.values()) + samples + dead
    assert dead == 0

    done = run_cli("traces", "tree", "trip", "--json", env=env)
    assert done.returncode == 0, done.stderr
    tree = json.loads(done.stdout)
    assert _shape(tree) == [
        "plan trip",
        [
            ["plan local-child", [["decision c-1", [["actor booker", [
                ["llm openai/gpt-4o-mini", []], ["llm custom/in-house", []], ["tool book", []],
            ]]]]]],
            ["plan remote-child", [["decision r-1", [["actor r", [
                ["llm anthropic/claude-3-5-haiku-latest", []], ["tool fetch", []],
            ]]]]]],
            ["decision d-1", [["actor planner", [
                ["llm openai/gpt-4o", []], ["tool search", []],
            ]]]],
        ],
    ]  # fmt: skip
    assert tree["cost_usd"] == pytest.approx(0.001 + 0.002 + 0.004)
    assert (tree["calls"], tree["unpriced_calls"], tree["tool_calls"]) == (4, 1, 3)
    assert (tree["prompt_tokens"], tree["completion_tokens"]) == (600, 60)
    assert tree["errors"] == 1
    assert tree["status"] == "ok" and tree["parent_plan_id"] is None
    assert "plan" in tree["phases_ms"]
    local, remote, _ = tree["children"]
    assert (local["cost_usd"], local["calls"], local["unpriced_calls"]) == (0.002, 2, 1)
    assert (remote["cost_usd"], remote["parent_plan_id"], remote["root_plan_id"]) == (
        0.004, "trip", "trip",
    )  # fmt: skip
    # A plan's duration is its own record's; it holds its children's.
    assert tree["duration_ms"] >= remote["duration_ms"] > 0
    assert tree["started_at"] <= remote["started_at"]

    # The same tree asked at a child: its subtree, the root named.
    done = run_cli("traces", "tree", "remote-child", "--json", env=env)
    remote_tree = json.loads(done.stdout)
    assert _shape(remote_tree) == _shape(remote)
    assert remote_tree["cost_usd"] == 0.004

    # People get the same tree drawn by rich.
    done = run_cli("traces", "tree", "trip", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("plan trip")
    assert "cost 0.00700 USD" in lines[0] or "cost 0.007" in lines[0]
    assert any("tool book  [error]" in line and "error: RuntimeError: no seats" in line
               for line in lines)  # fmt: skip
    assert any("plan remote-child" in line for line in lines)


def test_show_names_a_calls_ancestors(redis_url: str, keys: Keys, database_url: str) -> None:
    db = migrated(database_url)
    emitter = make_emitter(redis_url, keys)
    with (
        hooks.plan("root", emitter=emitter),
        hooks.plan("child", emitter=emitter),
        hooks.decision("d", emitter=emitter),
        hooks.actor("a", emitter=emitter),
    ):
        trace = hooks.record_llm_call(
            "openai", "gpt-4o", emitter=emitter, cost_usd=0.5, latency_ms=1.0
        )
    assert emitter.flush(30)
    emitter.close()
    env = worker_env(redis_url, db, keys)
    worker = start_worker("--burst", "--only", PERSIST_GROUP, env=env)
    worker.communicate(timeout=120)
    done = run_cli("traces", "show", str(trace.trace_id), env=env)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("ancestors")]
    assert "plan root (0.50 USD" in line
    assert line.index("plan root") < line.index("plan child") < line.index("decision d")
    assert line.index("decision d") < line.index("actor a")
    with create_pool(db, min_size=1, max_size=1) as pool:
        found = TreeQueries(pool).ancestors(trace.trace_id)
    assert found is not None
    assert [n.name for n in found[1]] == ["root", "child", "d", "a"]

    done = run_cli("traces", "tree", "nowhere", env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"fleettrace traces: no plan with id 'nowhere' in namespace {keys.namespace!r}"
    )
