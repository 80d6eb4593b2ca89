"""An agent that spoils its own keys within its rights lowers no figure: the
live counters, the plan reads, the CLI, the worker's /metrics and its aggregates count
the other producers' contribution, never less."""

from __future__ import annotations

import json
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from fleettrace.aggregates import snapshot_fields
from fleettrace.keys import plan_field
from fleettrace.live import is_over_budget, plan_cost_usd, read_live
from fleettrace.plans import count_plans, read_plan, top_plans
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.process import Worker
from fleettrace_worker.serve.aggregator import Aggregation
from fleettrace_worker.serve.http import serve
from tests.acl import NS, Secured, _bobs_records, run_worker_once
from tests.factories import _trace
from tests.servers import free_port
from tests.worker_helpers import fleettrace, migrated, worker_env


def test_an_agent_can_only_spoil_its_own_keys_and_lower_no_figure(
    secured: Secured, database_url: str
) -> None:
    _bobs_records(secured)  # bob: 5 calls on plan "shared", 1.0 each, 1 decision
    with secured.emitter("alice") as em:
        for i in range(3):
            em.record(_trace(i, plan="shared", cost=2.0))
        assert em.flush(10)
    run_worker_once(secured, database_url)  # the worker registers both producers
    assert secured.admin.smembers(secured.keys.producers) == {b"alice", b"bob"}
    reader = secured.admin
    assert plan_cost_usd(reader, secured.keys, "shared") == pytest.approx(11.0)

    alice = secured.keys.for_producer("alice")
    agent = secured.client("alice")
    cost_field = plan_field("plan.cost_usd", "", "sum")
    count_field = plan_field("plan.cost_usd", "", "count")
    tokens = alice.live("actor.token_usage")
    # What the agent's rights allow on its own keys: the worst case of the threat model.
    agent.hincrbyfloat(alice.plan("shared"), cost_field, -1000)
    agent.hset(alice.plan("shared"), count_field, "-50")
    agent.hset(alice.plan("shared"), plan_field("plan.decisions_count", "", "sum"), "nan")
    agent.hset(alice.plan("shared"), plan_field("plan.decisions_count", "", "count"), "junk")
    agent.hset(tokens, "provider=openai,model=gpt-4o,token_type=prompt|sum", "-1e12")
    agent.hset(tokens, "provider=openai,model=gpt-4o,token_type=prompt|count", "-7")
    agent.xadd(alice.traces, {"v": "junk"}, maxlen=0, approximate=False)
    agent.close()

    # Bob's contribution is all that is left, never less.
    assert plan_cost_usd(reader, secured.keys, "shared") == pytest.approx(5.0)
    assert is_over_budget(reader, secured.keys, "shared", budget_usd=4.99)
    plan = read_plan(reader, secured.keys, "shared")
    assert plan is not None
    assert (plan.cost_usd, plan.priced_calls, plan.decisions) == (pytest.approx(5.0), 5, 1)
    [top] = top_plans(reader, secured.keys, 1).plans
    assert (top.plan_id, top.cost_usd) == ("shared", pytest.approx(5.0))
    prompt = [
        s
        for s in read_live(reader, secured.keys, "actor.token_usage")
        if dict(s.labels)["token_type"] == "prompt"
    ]
    assert [(s.count, s.sum) for s in prompt] == [(5, 15.0)]  # bob's 5 calls, 1+2+...+5
    url = secured.urls["worker"]
    env = worker_env(url, database_url, secured.keys)
    where = ("--redis-url", url, "--namespace", secured.keys.namespace)
    table = fleettrace("metrics", *where, env=env)
    top = fleettrace("metrics", "--top", "1", "--json", *where, env=env)
    assert table.returncode == 0 and top.returncode == 0, table.stderr + top.stderr
    prompt_row = next(line.split() for line in table.stdout.splitlines() if "prompt" in line)
    assert prompt_row[3:5] == ["5", "15"]  # KEY LABELS UNIT COUNT SUM
    assert json.loads(top.stdout)["items"] == [
        {"plan": "shared", "cost_usd": 5.0, "priced_calls": 5, "decisions": 1, "child_plans": 0}
    ]
    # And the worker's /metrics, with the costliest plans.
    worker = Worker(WorkerSettings(url, migrated(database_url), namespace=NS))
    port = free_port()
    server = serve(f"127.0.0.1:{port}", worker, reader, plans=5)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            scrape = answer.read().decode()
    finally:
        server.shutdown()
        worker.context.close()
    samples = [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    ]
    assert ("fleettrace_plan_cost_usd_total", {"plan": "shared"}, 5.0) in samples
    assert all(value >= 0 for name, _, value in samples if name.startswith("fleettrace_"))


def test_the_aggregates_keep_the_promise_with_the_worker_and_budget_lines(
    secured: Secured,
) -> None:
    """The worker's aggregates, folded as the worker user and read as the budget
    user: an agent that spoils its own hashes and dirty set lowers nothing."""
    _bobs_records(secured)  # bob: 5 calls on plan "shared", 1.0 each
    with secured.emitter("alice") as em:
        for i in range(3):
            em.record(_trace(i, plan="shared", cost=2.0))
        assert em.flush(10)
    secured.admin.sadd(secured.keys.producers, "alice", "bob")  # as the worker's discovery
    worker, carol, agent = (secured.client(user) for user in ("worker", "carol", "alice"))
    try:
        aggregation = Aggregation(worker, secured.keys)
        aggregation.fold_everything()
        assert aggregation.tick() == 0  # the fold took every dirty member
        assert carol.exists(secured.keys.aggregate_fresh)
        assert plan_cost_usd(carol, secured.keys, "shared") == pytest.approx(11.0)
        alice = secured.keys.for_producer("alice")
        agent.hincrbyfloat(alice.plan("shared"), plan_field("plan.cost_usd", "", "sum"), -1000)
        tokens = alice.live("actor.token_usage")
        agent.hset(tokens, "provider=openai,model=gpt-4o,token_type=prompt|count", "-7")
        agent.sadd(alice.dirty, "p:shared", "l:actor.token_usage", "junk", "p:" + "x" * 300)
        assert aggregation.tick() == 4
        assert plan_cost_usd(carol, secured.keys, "shared") == pytest.approx(5.0)
        assert is_over_budget(carol, secured.keys, "shared", budget_usd=4.99)
        [top] = top_plans(carol, secured.keys, 1).plans
        assert (top.plan_id, top.cost_usd) == ("shared", pytest.approx(5.0))
        assert count_plans(carol, secured.keys) == (1, True)
        prompt = [
            s
            for s in read_live(carol, secured.keys, "actor.token_usage")
            if dict(s.labels)["token_type"] == "prompt"
        ]
        assert [s.count for s in prompt] == [5]  # bob's 5 calls
        # That read was the worker's snapshot, which the budget line reads and the
        # agent line can neither read nor write.
        assert snapshot_fields(carol, secured.keys) is not None
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.hset(secured.keys.aggregate_snapshot, "built", "0")
    finally:
        for client in (worker, carol, agent):
            client.close()
