"""Least-privilege Redis users (the exact lines of docs/security.md, on the real
Redis), TLS options reaching redis-py and libpq, and the LangSmith key kept out of
logs, dead letters, reprs and --help."""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from fleettrace.aggregates import snapshot_fields
from fleettrace.batch_script import BatchCall, library_loaded
from fleettrace.batching import encode_calls
from fleettrace.codec import Kind, encode_batch, new_batch_id
from fleettrace.connection import connect_redis
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.errors import ConfigurationError
from fleettrace.keys import APPLY_FUNCTION, LIBRARY_NAME, Keys, plan_field
from fleettrace.live import is_over_budget, plan_cost_usd, read_live
from fleettrace.model import LLMTrace
from fleettrace.plans import count_plans, read_plan, top_plans
from fleettrace_worker.cli import COMMANDS
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.errors import DatabaseUnavailable
from fleettrace_worker.forward.langsmith.group import ForwardLoop, loop_settings
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.keys import LANGSMITH_GROUP, PERSIST_GROUP
from fleettrace_worker.process import Worker
from fleettrace_worker.serve.aggregator import Aggregation
from fleettrace_worker.serve.http import serve
from fleettrace_worker.store.database import connect, create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters, replay_dead_letters
from fleettrace_worker.stream.loop import LoopSettings
from fleettrace_worker.stream.trim import trim_streams
from tests.acl import AGENT, BUDGET_AGENT, WORKER, create_user, documented_acl_lines, rules
from tests.factories import llm_trace
from tests.langsmith_server import Fault, LangSmithServer
from tests.servers import PrivateRedis, free_port
from tests.waiting import wait_until
from tests.worker_helpers import fleettrace, fleettrace_here, migrated, trace_rows, worker_env

API_KEY = "lsv2_sk_" + "7f3e9a1c5b2d4e6f8a0b1c2d3e4f5a6b" + "_9c8d7e6f5a"
NS = "fleet"


@dataclass
class Secured:
    """A private Redis 7 with users made from the documented lines: agents ``alice``
    and ``bob``, ``carol`` with the budget line, ``worker``."""

    admin: redis.Redis
    urls: dict[str, str]
    keys: Keys

    def client(self, user: str) -> redis.Redis:
        return redis.Redis.from_url(self.urls[user])

    def emitter(self, user: str, **settings: Any) -> Emitter:
        return Emitter(
            EmitterSettings(
                redis_url=self.urls[user],
                namespace=self.keys.namespace,
                retry_initial_s=0.01,
                retry_max_s=0.05,
                **settings,
            )
        )


def _secure(server: PrivateRedis) -> Secured:
    admin = redis.Redis.from_url(server.url)
    keys = Keys(NS)
    urls = {}
    for user, template in (
        ("alice", AGENT),
        ("bob", AGENT),
        ("carol", BUDGET_AGENT),
        ("worker", WORKER),
    ):
        urls[user] = create_user(admin, template, keys, user, uuid.uuid4().hex)
    return Secured(admin, urls, keys)


@pytest.fixture
def secured(private_redis: PrivateRedis) -> Iterator[Secured]:
    setup = _secure(private_redis)
    yield setup
    setup.admin.close()


def test_the_page_has_exactly_the_tested_lines() -> None:
    assert set(documented_acl_lines()) == {AGENT, BUDGET_AGENT, WORKER}
    for template in (AGENT, BUDGET_AGENT):
        line = documented_acl_lines()[template]
        # Only the namespace, the user name and the password vary.
        assert f"~{{fleettrace}}:p:{template}:*" in line.split()
        assert not {"+eval", "+evalsha", "+script|load", "+function|load", "+@all"} & set(
            line.split()
        )


def _trace(i: int, plan: str = "", cost: float | None = None) -> LLMTrace:
    priced = {} if cost is None else {"cost_usd": cost}
    return llm_trace(
        plan_id=plan or f"plan-{i % 3}",
        actor="a",
        provider="openai",
        model="gpt-4o",
        prompt_tokens=i + 1,
        **priced,  # type: ignore[arg-type]
    )


def _own_keys(admin: redis.Redis, keys: Keys) -> set[str]:
    return {k.decode() for k in admin.scan_iter(match=f"{keys.prefix}*", count=1000)}


def test_an_agent_writes_only_under_its_own_prefix(secured: Secured) -> None:
    with secured.emitter("alice") as em:
        for i in range(20):
            em.record(_trace(i, cost=0.1))
        em.observe("tool.invocation_duration_ms", 12.0, {"tool": "search"})
        em.observe("plan.decisions_count", 1, {"plan": "plan-0"})
        assert em.flush(10)
        assert em.stats.send_failures == 0
        assert em.keys.producer == "alice"  # from ACL WHOAMI
    written = _own_keys(secured.admin, secured.keys)
    alice = secured.keys.for_producer("alice")
    assert written and all(k.startswith(alice.producer_prefix + ":") for k in written)
    assert {alice.traces, alice.metrics, alice.emitter} <= written
    assert secured.admin.hgetall(alice.emitter)[b"records"] == b"22"


def _bobs_records(secured: Secured) -> dict[str, object]:
    """Bob records; what his keys hold afterwards."""
    with secured.emitter("bob") as em:
        for i in range(5):
            em.record(_trace(i, plan="shared", cost=1.0))
        em.observe("plan.decisions_count", 1, {"plan": "shared"})
        assert em.flush(10)
        bob_id = em.emitter_id
    return {"emitter_id": bob_id, **_snapshot(secured.admin, secured.keys.for_producer("bob"))}


def _snapshot(admin: redis.Redis, keys: Keys) -> dict[str, object]:
    return {
        key: (admin.type(key), admin.xlen(key) if admin.type(key) == b"stream" else admin.dump(key))
        for key in sorted(_own_keys(admin, keys))
        if key.startswith(keys.producer_prefix + ":")
    }


def test_the_issue_commands_cannot_touch_another_producers_keys(secured: Secured) -> None:
    before = _bobs_records(secured)
    bob = secured.keys.for_producer("bob")
    cost_field = plan_field("plan.cost_usd", "", "sum")
    alice = secured.client("alice")
    legacy_traces, legacy_metrics = secured.keys.legacy_streams
    refused = [
        # The table of the issue, aimed at another producer's keys.
        ("XADD", bob.traces, "MAXLEN", "0", "*", "v", "junk"),
        ("SET", bob.metrics, "x", "PX", "1"),
        ("SET", bob.live("actor.token_usage"), "x"),
        ("HSET", bob.plan("shared"), cost_field, "0"),
        ("HINCRBYFLOAT", bob.plan("shared"), cost_field, "-1000"),
        ("SET", bob.emitter_seq(str(before["emitter_id"])), "999999"),
        ("SET", bob.emitter_seq("next-emitter"), "1"),
        ("SADD", bob.dirty, "p:shared"),
        ("SREM", bob.dirty, "p:shared"),
        # ...at the worker's aggregates, which readers read while a worker runs.
        ("HSET", secured.keys.aggregate_plan("shared"), cost_field, "0"),
        ("DEL", secured.keys.aggregate_plan("shared")),
        ("ZADD", secured.keys.aggregate_plan_costs, "0", "shared"),
        ("SET", secured.keys.aggregate_fresh, "1"),
        ("HSET", secured.keys.aggregate_live("actor.token_usage"), "x|count", "-1"),
        ("HSET", secured.keys.aggregate_seen("bob", "actor.token_usage"), "x|count", "9"),
        # ...at the namespace's shared keys and the layout before this one.
        ("XADD", legacy_traces, "MAXLEN", "0", "*", "v", "junk"),
        ("SET", legacy_metrics, "x"),
        ("SADD", secured.keys.producers, "ghost"),
        ("DEL", secured.keys.producers),
        ("XADD", secured.keys.dead_letters("persist"), "*", "v", "1"),
        ("SET", secured.keys.worker_health("w"), "{}"),
        # ...and reads, deletes and administration.
        ("XRANGE", bob.traces, "-", "+"),
        ("XLEN", bob.traces),
        ("HGETALL", bob.plan("shared")),
        ("GET", bob.emitter_seq(str(before["emitter_id"]))),
        ("DEL", bob.traces),
        ("UNLINK", bob.plan("shared")),
        ("XTRIM", bob.traces, "MAXLEN", "0"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        # No code of its own on the server: no script, no function.
        ("SCRIPT", "LOAD", "while true do end"),
        ("EVAL", "while true do end", "0"),
        ("EVALSHA", "0" * 40, "0"),
        ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('f', function() end)"),
        ("FUNCTION", "DELETE", "fleettrace"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "LIST"),
    ]
    try:
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                alice.execute_command(*command)
        # The batch function itself, called with another producer's keys.
        [call] = build_fake_call(bob)
        with pytest.raises(redis.exceptions.ResponseError, match=r"NOPERM|no permissions"):
            alice.fcall(APPLY_FUNCTION, len(call.keys), *call.keys, *call.args)
    finally:
        alice.close()
    after = _bobs_records_unchanged(secured, bob)
    before.pop("emitter_id")
    assert after == before
    assert not secured.admin.exists(legacy_traces, legacy_metrics, secured.keys.producers)
    assert plan_cost_usd(secured.admin, bob, "shared") == pytest.approx(5.0)


def build_fake_call(keys: Keys) -> list[BatchCall]:
    return encode_calls(keys, "forged", lambda: 1, [_trace(0, plan="shared", cost=1.0)], 0).calls


def _bobs_records_unchanged(secured: Secured, bob: Keys) -> dict[str, object]:
    return _snapshot(secured.admin, bob)


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


def run_worker_once(secured: Secured, database_url: str) -> str:
    """A burst of the persist group as the worker user; returns the migrated URL."""
    db = migrated(database_url)
    worker = connect_redis(secured.urls["worker"])
    pool = create_pool(db, min_size=1, max_size=2)
    try:
        burst = LoopSettings(burst=True, retry_initial_s=0.01, retry_max_s=0.05)
        persist = PersistLoop(
            Consumer(worker, secured.keys, PERSIST_GROUP, "w1"),
            LLMTraceRepository(pool),
            burst,
            pool=pool,
        )
        persist.run(threading.Event())
    finally:
        pool.close()
        worker.close()
    return db


def test_the_budget_line_reads_counters_and_nothing_else(secured: Secured) -> None:
    _bobs_records(secured)
    secured.admin.sadd(secured.keys.producers, "bob")  # as the worker would
    bob = secured.keys.for_producer("bob")
    with secured.emitter("carol") as em:
        em.record(_trace(0, plan="shared", cost=0.5))
        assert em.flush(10)
        assert em.stats.send_failures == 0
    carol = secured.client("carol")
    mine = secured.keys.for_producer("carol")  # a reader adds its own producer's counts
    try:
        assert plan_cost_usd(carol, mine, "shared") == pytest.approx(5.5)
        assert is_over_budget(carol, mine, "shared", budget_usd=5.0)
        assert read_live(carol, mine)
        plan = read_plan(carol, mine, "shared")
        assert plan is not None and plan.priced_calls == 6
        for command in (
            ("XRANGE", bob.traces, "-", "+"),
            ("XADD", bob.traces, "MAXLEN", "0", "*", "v", "1"),
            ("HINCRBYFLOAT", bob.plan("shared"), "plan.cost_usd||sum", "-5"),
            ("HGETALL", bob.emitter),
            ("SADD", secured.keys.producers, "ghost"),
            ("EVAL", "return 1", "0"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                carol.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            carol.get(bob.emitter_seq("x"))
    finally:
        carol.close()


def test_the_worker_user_discovers_consumes_stores_forwards_dead_letters_and_trims(
    secured: Secured, database_url: str
) -> None:
    records = {"alice": [_trace(i) for i in range(30)], "bob": [_trace(i) for i in range(7)]}
    for user, batch in records.items():
        with secured.emitter(user) as em:
            for record in batch:
                em.record(record)
            assert em.flush(10)
    keys = secured.keys
    db = run_worker_once(secured, database_url)
    assert trace_rows(db) == 37
    with psycopg.connect(db) as conn:
        by_producer = dict(
            conn.execute("SELECT producer, count(*) FROM llm_traces GROUP BY producer").fetchall()
        )
        namespaces = conn.execute("SELECT DISTINCT namespace FROM llm_traces").fetchall()
    assert by_producer == {"alice": 30, "bob": 7}
    assert namespaces == [(NS,)]
    worker = connect_redis(secured.urls["worker"])
    try:
        with LangSmithServer(api_key=API_KEY) as server:
            settings = LangSmithSettings(
                enabled=True, endpoint=server.url, api_key=API_KEY, backoff_initial_s=0.01
            )
            server.inject(Fault("status", status=400, count=1))
            forward = ForwardLoop(
                Consumer(worker, keys, LANGSMITH_GROUP, "w1"),
                LangSmithSettings(**{**_fields(settings), "concurrency": 1}),
                loop=loop_settings(settings, burst=True),
            )
            forward.run(threading.Event())
            assert len(list_dead_letters(worker, keys, LANGSMITH_GROUP)) >= 1
            report = replay_dead_letters(worker, keys, LANGSMITH_GROUP)
            assert report.replayed and not report.refused
            forward.run(threading.Event())
            sent = {str(r.trace_id) for batch in records.values() for r in batch}
            assert sent <= server.run_ids()
        assert list_dead_letters(worker, keys, LANGSMITH_GROUP) == []

        trim_streams(worker, keys)
        assert read_live(worker, keys)
        assert {p.plan_id for p in top_plans(worker, keys, 5).plans} == {
            "plan-0",
            "plan-1",
            "plan-2",
        }
        assert count_plans(worker, keys) == (3, True)
        worker.set(keys.worker_health("w1"), "{}", ex=10)
        assert worker.get(keys.worker_health("w1")) == b"{}"
        # Even the worker cannot touch another namespace or administer the server.
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.xrange(Keys(f"other-{uuid.uuid4().hex[:8]}").traces)
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.execute_command("FLUSHDB")
    finally:
        worker.close()


def test_a_missing_function_is_a_counted_failure_until_a_worker_loads_it(
    database_url: str,
) -> None:
    server = PrivateRedis(appendonly=False, batch_library=False)
    server.start()
    try:
        secured = _secure(server)
        em = secured.emitter("alice")
        em.record(_trace(0))
        wait_until(lambda: em.stats.send_failures >= 2, message="the emitter to retry")
        stats = em.stats
        assert (stats.sent, stats.buffered, stats.dropped) == (0, 1, 0)
        assert f"{APPLY_FUNCTION} is not loaded" in (stats.last_error or "")
        assert secured.admin.keys("*") == []
        # A worker loads the library at start, and at each health tick when missing.
        worker = Worker(
            WorkerSettings(
                secured.urls["worker"],
                migrated(database_url),
                namespace=NS,
                block_ms=100,
                health_interval_s=0.2,
            )
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert em.flush(20)
            assert em.stats.sent == 1
            em.close()
            secured.admin.function_delete(LIBRARY_NAME)  # as a restart without persistence
            wait_until(lambda: library_loaded(secured.admin) is True, 20, "the reload")
        finally:
            worker.stop.set()
            thread.join(20)
        secured.admin.close()
    finally:
        server.close()


def test_a_wrong_password_is_one_line_without_the_password(secured: Secured) -> None:
    url = re.sub(r":[0-9a-f]{32}@", ":not-the-password@", secured.urls["worker"])
    result = fleettrace(
        "metrics",
        "--redis-url",
        url,
        "--namespace",
        secured.keys.namespace,
        env=worker_env(url, "postgresql://postgres@127.0.0.1:5432/postgres", secured.keys),
    )
    assert result.returncode != 0
    assert "not-the-password" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _fields(settings: LangSmithSettings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


# -- TLS options pass through ------------------------------------------------------------


def test_rediss_url_options_reach_redis_py(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a real certificate\n")
    url = (
        "rediss://agent:pw@127.0.0.1:6379/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={ca}&ssl_check_hostname=true"
    )
    # Checked first: a CA file that holds no certificate is named in one line.
    with pytest.raises(ConfigurationError, match=f"{ca} \\(ssl_ca_certs of the Redis URL\\)"):
        connect_redis(url)
    client = connect_redis(url, check_files=False)  # as the emitter makes it
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    kwargs = pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_ca_certs"] == str(ca)
    assert kwargs["ssl_check_hostname"] is True
    assert kwargs["username"] == "agent"
    connection = pool.connection_class(**kwargs)
    assert isinstance(connection, redis.SSLConnection)
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.ca_certs == str(ca)
    # The handshake is attempted with that CA file, which holds no certificate.
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE"):
        client.ping()
    client.close()


def test_sslmode_reaches_libpq(database_url: str) -> None:
    url = f"{database_url}?sslmode=require&sslrootcert=/nonexistent/ca.pem&application_name=ft"
    pool = create_pool(url, min_size=1, max_size=1)
    try:
        params = psycopg.conninfo.conninfo_to_dict(pool.conninfo)
        assert params["sslmode"] == "require"
        assert params["sslrootcert"] == "/nonexistent/ca.pem"
    finally:
        pool.close(timeout=1)
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        ssl_on = admin.execute("SHOW ssl").fetchone() == ("on",)
    if ssl_on:
        pytest.skip("the server speaks TLS; the refusal below needs one that does not")
    # libpq got sslmode=require: a server without TLS is refused for that reason.
    with pytest.raises((ConfigurationError, DatabaseUnavailable), match="SSL"):
        connect(f"{database_url}?sslmode=require")


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


# -- the LangSmith API key ---------------------------------------------------------------


def test_the_api_key_is_in_no_log_dead_letter_or_repr(
    redis_client: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    entry = encode_batch(Kind.TRACE, [_trace(i) for i in range(4)], new_batch_id())
    with LangSmithServer(api_key=API_KEY) as server:
        settings = LangSmithSettings(
            enabled=True,
            endpoint=server.url,
            api_key=API_KEY,
            retry_for_s=0.5,
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
            request_timeout_s=0.5,
            concurrency=1,
        )
        consumer = Consumer(redis_client, keys, LANGSMITH_GROUP, "w-key")
        loop = ForwardLoop(consumer, settings, loop=loop_settings(settings, burst=True))
        # Refused for good (422), then unavailable in every way until given up.
        for faults in (
            (Fault("status", status=422, count=1),),
            (
                Fault("close", count=2),
                Fault("sleep", sleep_s=1.0, count=1),
                Fault("status", status=503, duration_s=600),
            ),
        ):
            server.clear_faults()
            server.inject(*faults)
            redis_client.xadd(keys.traces, entry)  # type: ignore[arg-type]
            loop.run(threading.Event())
        server.clear_faults()
    unreachable = LangSmithSettings(
        enabled=True,
        endpoint="http://127.0.0.1:9",
        api_key=API_KEY,
        retry_for_s=0.3,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    redis_client.xadd(keys.traces, entry)  # type: ignore[arg-type]
    ForwardLoop(
        Consumer(redis_client, keys, LANGSMITH_GROUP, "w-key-2"),
        unreachable,
        loop=loop_settings(unreachable, burst=True),
    ).run(threading.Event())

    letters = list_dead_letters(redis_client, keys, LANGSMITH_GROUP)
    reasons = " ".join(letter.reason for _, letter in letters)
    assert "422" in reasons
    assert "did not answer in time" in reasons or "503" in reasons
    assert "cannot connect" in reasons
    texts = [caplog.text, reasons, repr(settings), str(settings), repr(loop), repr(loop.sender)]
    for text in texts:
        for part in (API_KEY, API_KEY[:12], API_KEY[-10:]):
            assert part not in text


def test_the_api_key_is_not_in_help(
    keys: Keys, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = worker_env("redis://127.0.0.1:6379/0", PG_ADMIN, keys)
    env.update(LANGSMITH_API_KEY=API_KEY, LANGSMITH_TRACING="true")
    for args in (("--help",), *((name, "--help") for name in COMMANDS)):
        result = fleettrace_here(*args, env=env, monkeypatch=monkeypatch, capsys=capsys)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: fleettrace")
        assert API_KEY not in result.stdout + result.stderr
        assert API_KEY[-10:] not in result.stdout + result.stderr


def test_a_user_name_that_cannot_name_keys_is_a_counted_failure_until_overridden(
    secured: Secured,
) -> None:
    password = uuid.uuid4().hex
    odd = "ops@agent"  # a valid ACL user name, not a valid producer identity
    url = create_user(secured.admin, AGENT, secured.keys, "ops", password).replace(
        "redis://ops:", "redis://ops%40agent:"
    )
    secured.admin.execute_command(
        "ACL", "SETUSER", odd, *rules(AGENT, secured.keys, "ops", password)
    )
    em = Emitter(EmitterSettings(redis_url=url, namespace=NS, retry_initial_s=0.01))
    em.record(_trace(0))
    wait_until(lambda: em.stats.send_failures >= 2, message="the emitter to retry")
    assert "producer identity 'ops@agent'" in (em.stats.last_error or "")
    assert em.stats.buffered == 1
    em.close(0.1)
    # Overridden with a valid identity that its key pattern grants, it records.
    with Emitter(EmitterSettings(redis_url=url, namespace=NS, producer="ops")) as em:
        em.record(_trace(0))
        assert em.flush(10)
        assert em.stats.send_failures == 0
    assert secured.admin.xlen(secured.keys.for_producer("ops").traces) == 1
