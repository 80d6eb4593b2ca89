"""/healthz, /readyz and /metrics of a worker run in this process, against the
machine's Redis and a fresh database; live metrics come from a real emitter."""

from __future__ import annotations

import math
import random
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.errors import ConfigurationError
from fleettrace.keys import DIRTY_LIVE, STAT_FINE_PREFIX
from fleettrace.metrics import MetricKey
from fleettrace_worker.cli import main
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.process import Worker
from fleettrace_worker.serve.http import metric_name, parse_address, serve
from tests.factories import numbered_trace
from tests.servers import free_port
from tests.waiting import wait_until
from tests.worker_helpers import migrated, serving_worker, trace_rows


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def running(redis_url, keys, database_url) -> Iterator[tuple[Worker, str, str]]:
    db = migrated(database_url)
    with serving_worker(redis_url, db, keys, consumer="h1") as (worker, base):
        yield worker, base, db


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.redis_version(7, 0)  # the lag gauge needs XINFO GROUPS lag (7.0)
def test_endpoints_report_the_worker_and_the_fleet(running, redis_url, keys) -> None:
    _, base, db = running
    emitter = Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace))
    for i in range(20):
        emitter.record(numbered_trace(i))
    for value in (0.5, 3.0, 3.0, 100_000.0):
        emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, value, {"tool": "grep"})
    emitter.observe(MetricKey.CONTEXT_TOKENS_USED, 1234.0)
    assert emitter.flush(30)
    emitter.close()
    wait_until(lambda: trace_rows(db) == 20, 60, "rows")
    wait_until(lambda: _get(f"{base}/readyz")[0] == 200, 30, "ready")
    assert _get(f"{base}/healthz")[::2] == (200, "ok\n")
    assert _get(f"{base}/readyz")[::2] == (200, "ready\n")
    assert _get(f"{base}/nope")[0] == 404
    status, content_type, text = _get(f"{base}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    found = _samples(text)
    group = (("group", "persist"),)
    assert found[("fleettrace_worker_records_total", group)] == 25.0
    assert found[("fleettrace_worker_ready", ())] == 1.0
    assert found[("fleettrace_worker_dead_letters_total", group)] == 0.0
    assert found[("fleettrace_worker_batch_latency_seconds_count", group)] >= 1
    assert ("fleettrace_worker_batch_latency_seconds_bucket", (*group, ("le", "+Inf"))) in found
    pending = ("fleettrace_worker_pending", (("group", "persist"), ("stream", keys.traces)))
    assert found[pending] == 0.0
    lag = ("fleettrace_worker_lag", (("group", "persist"), ("stream", keys.traces)))
    assert found[lag] == 0.0
    tool = metric_name(MetricKey.TOOL_INVOCATION_DURATION_MS)
    assert tool == "fleettrace_tool_invocation_duration_ms"
    assert found[(f"{tool}_count", (("tool", "grep"),))] == 4.0
    assert found[(f"{tool}_sum", (("tool", "grep"),))] == 100_006.5
    assert found[(f"{tool}_bucket", (("le", "1.0"), ("tool", "grep")))] == 1.0
    assert found[(f"{tool}_bucket", (("le", "5.0"), ("tool", "grep")))] == 3.0
    assert found[(f"{tool}_bucket", (("le", "60000.0"), ("tool", "grep")))] == 3.0
    assert found[(f"{tool}_bucket", (("le", "+Inf"), ("tool", "grep")))] == 4.0
    assert found[("fleettrace_context_tokens_used", ())] == 1234.0
    tokens = [
        value
        for (name, labels), value in found.items()
        if name == "fleettrace_actor_token_usage_total" and ("token_type", "prompt") in labels
    ]
    assert sum(tokens) == sum(numbered_trace(i).prompt_tokens for i in range(20))
    assert "# TYPE fleettrace_tool_invocation_duration_ms histogram" in text
    # The 7 plans of those traces are counted, but never exported by default.
    assert redis.Redis.from_url(redis_url).exists(keys.plan("plan-3"))
    assert "plan=" not in text
    assert "fleettrace_plan_cost_usd" not in text


def test_not_ready_and_metrics_without_redis_figures(redis_url, keys, database_url) -> None:
    worker = Worker(WorkerSettings(redis_url, database_url, namespace=keys.namespace))
    port = free_port()
    # Redis away: the worker's own figures are served all the same.
    server = serve(f"127.0.0.1:{port}", worker, redis.Redis(port=free_port()))
    try:
        status, _, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert (status, body) == (503, "not ready: starting or stopping\n")
        status, _, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert "fleettrace_worker_ready 0.0" in text
        assert "fleettrace_worker_pending" not in text
    finally:
        server.shutdown()


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("0.0.0.0", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", "host:99999", "host:port"):
        with pytest.raises(ConfigurationError, match="--http must be HOST:PORT"):
            parse_address(bad)


def test_a_busy_port_is_one_clear_error(redis_url, keys, database_url) -> None:
    worker = Worker(WorkerSettings(redis_url, database_url, namespace=keys.namespace))
    port = free_port()
    server = serve(f"127.0.0.1:{port}", worker, redis.Redis.from_url(redis_url))
    try:
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(f"127.0.0.1:{port}", worker, redis.Redis.from_url(redis_url))
    finally:
        server.shutdown()


def test_metrics_plans_exports_the_costliest_plans_only(redis_url, keys, database_url) -> None:
    emitter = Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace))
    for i, cost in enumerate((0.5, 3.0, 0.25, 2.0)):
        emitter.record(numbered_trace(i, plan_id=f"p-{i}").model_copy(update={"cost_usd": cost}))
    emitter.observe(MetricKey.PLAN_DECISIONS_COUNT, 1, {"plan": "p-1"})
    emitter.observe(MetricKey.PLAN_DECISIONS_COUNT, 1, {"plan": "p-0"})
    assert emitter.close()
    settings = WorkerSettings.from_env(
        redis_url,
        database_url,
        {"FLEETTRACE_WORKER_METRICS_PLANS": "2"},
        namespace=keys.namespace,
    )
    assert settings.metrics_plans == 2
    worker = Worker(settings)
    port = free_port()
    client = redis.Redis.from_url(redis_url)
    server = serve(f"127.0.0.1:{port}", worker, client, plans=settings.metrics_plans)
    try:
        _, _, text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
        client.close()
    found = _samples(text)
    cost = {
        labels: value
        for (name, labels), value in found.items()
        if name == "fleettrace_plan_cost_usd_total"
    }
    assert cost == {(("plan", "p-1"),): 3.0, (("plan", "p-3"),): 2.0}
    decisions = {
        labels: value
        for (name, labels), value in found.items()
        if name == "fleettrace_plan_decisions_count_total"
    }
    assert decisions == {(("plan", "p-1"),): 1.0}  # p-0 is not among the top 2


@pytest.mark.parametrize("plans", [-1, 1001])
def test_metrics_plans_is_capped(redis_url, database_url, plans) -> None:
    with pytest.raises(ConfigurationError, match="metrics_plans must be 0-1000"):
        WorkerSettings(redis_url, database_url, metrics_plans=plans)
    with pytest.raises(ConfigurationError, match="--metrics-plans must be 0-1000"):
        serve("127.0.0.1:0", Worker(WorkerSettings(redis_url, database_url)), None, plans=plans)  # type: ignore[arg-type]


def test_the_worker_command_takes_and_checks_metrics_plans(
    redis_url, database_url, capsys, monkeypatch
) -> None:
    where = ["--redis-url", redis_url, "--database-url", database_url]
    with pytest.raises(SystemExit) as refused:
        main(["worker", *where, "--metrics-plans", "5000"])
    assert refused.value.code == 2
    assert (
        "argument --metrics-plans: must be between 0 and 1000, got 5000" in capsys.readouterr().err
    )
    monkeypatch.setenv("FLEETTRACE_WORKER_METRICS_PLANS", "many")
    assert main(["worker", *where]) == 2
    assert "FLEETTRACE_WORKER_METRICS_PLANS must be a whole number" in capsys.readouterr().err


def test_plans_that_cannot_be_read_leave_the_fleet_families_in(
    redis_url, keys, database_url, caplog
) -> None:
    emitter = Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace))
    emitter.record(numbered_trace(1, plan_id="p-1"))
    emitter.observe(MetricKey.CONTEXT_TOKENS_USED, 77.0)
    assert emitter.close()
    client = redis.Redis.from_url(redis_url)
    client.set(keys.plan("broken"), "not a hash")  # the plan read fails with WRONGTYPE
    port = free_port()
    worker = Worker(WorkerSettings(redis_url, database_url, namespace=keys.namespace))
    server = serve(f"127.0.0.1:{port}", worker, client, plans=5)
    try:
        with caplog.at_level("WARNING", logger="fleettrace_worker.serve.http"):
            texts = [_get(f"http://127.0.0.1:{port}/metrics")[2] for _ in range(2)]
    finally:
        server.shutdown()
        client.close()
    for text in texts:
        assert _samples(text)[("fleettrace_context_tokens_used", ())] == 77.0
        assert "plan=" not in text
    warnings = [r.getMessage() for r in caplog.records if "plans left out" in r.getMessage()]
    assert len(warnings) == 1  # once per distinct error, not once per scrape
    assert "WRONGTYPE" in warnings[0]


def test_classic_le_buckets_are_the_fine_buckets_summed(running, redis_url, keys) -> None:
    """Values at, just under and just over every classic bound (and a few far away):
    each exported ``le`` count is the number of values <= le, and equals the fine
    buckets of the live hash summed by the classic bound they carry."""
    _, base, _ = running
    key = MetricKey.ACTOR_INVOCATION_DURATION_MS
    bounds = key.spec.buckets
    values = [0.0, 2e-4, 1e9]
    for bound in bounds:
        values += [math.nextafter(bound, 0), bound, math.nextafter(bound, math.inf)]
    rng = random.Random(3)
    values += [rng.lognormvariate(5, 3) for _ in range(300)]
    emitter = Emitter(EmitterSettings(redis_url=redis_url, namespace=keys.namespace))
    for value in values:
        emitter.observe(key, value, {"actor": "coder"})
    assert emitter.flush(30)
    emitter.close()

    fine: dict[float, int] = {}
    for raw_field, amount in redis.Redis.from_url(redis_url).hgetall(keys.live(key.value)).items():
        stat = raw_field.decode().rpartition("|")[2]
        if stat.startswith(STAT_FINE_PREFIX):
            le_text = stat.rpartition("/")[2]
            le = math.inf if le_text == "+Inf" else float(le_text)
            fine[le] = fine.get(le, 0) + int(amount)
    assert len(fine) == len(bounds) + 1

    # A series an emitter before the sketches left: classic buckets only.
    redis.Redis.from_url(redis_url).hset(
        keys.live(key.value),
        mapping={
            "actor=old|count": 3,
            "actor=old|sum": 4.5,
            "actor=old|le=10.0": 2,
            "actor=old|le=+Inf": 1,
        },
    )

    # Named in the producer's dirty set, as a batch does, for the worker's aggregates.
    redis.Redis.from_url(redis_url).sadd(keys.dirty, DIRTY_LIVE + key.value)
    name = f"{metric_name(key)}_bucket"

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return _samples(_get(f"{base}/metrics")[2])

    wait_until(lambda: (name, (("actor", "old"), ("le", "10.0"))) in scraped(), 20, "a fold")
    found = scraped()
    old = [found[(name, (("actor", "old"), ("le", le)))] for le in ("10.0", "81920.0", "+Inf")]
    assert old == [2.0, 2.0, 3.0]
    assert found[(f"{metric_name(key)}_sum", (("actor", "old"),))] == 4.5
    for bound in (*bounds, math.inf):
        le = "+Inf" if bound == math.inf else repr(float(bound))
        exported = found[(name, (("actor", "coder"), ("le", le)))]
        assert exported == sum(1 for v in values if v <= bound)
        assert exported == sum(n for b, n in fine.items() if b <= bound)
