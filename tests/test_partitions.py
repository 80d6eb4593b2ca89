"""Schema version 8 (daily partitions) against the machine's PostgreSQL: the migration
over rows of version 6 while a writer keeps storing, applied twice and from two
processes; redelivered rows still met by the (id, time) keys; rows outside the
created days kept in the default partition and moved when their day is made; prune
dropping whole days and deleting in batches only at the boundary; lookups by a
time-ordered id bounded to its days."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.cli import main
from fleettrace_worker.store import (
    database,
    erasure,
    migrations,
    partitions,
    retention,
    settings,
)
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.factories import llm_trace, numbered_sample, numbered_trace
from tests.waiting import wait_until
from tests.worker_helpers import (
    at_schema_version,
    migrate_from_processes,
    scalar,
    serving_worker,
)

NOW = datetime.now(UTC)
TODAY = NOW.date()


def _day(offset: int, hour: int = 12) -> datetime:
    return partitions.day_start(TODAY + timedelta(days=offset)) + timedelta(hours=hour)


def uuid7(at: datetime) -> uuid.UUID:
    """A time-ordered id (UUIDv7 layout) made at ``at``."""
    millis = int(at.timestamp() * 1000)
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (
        (millis << 80)
        | (0x7 << 76)
        | ((rand >> 62) << 64)
        | (0b10 << 62)
        | (rand & ((1 << 62) - 1))
    )
    return uuid.UUID(int=value)


def _names(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [p.name for p in partitions.layout(conn, table)]


def _tree(at: datetime, i: int) -> tuple[ToolCall, PlanRecord]:
    tool = ToolCall(
        tool="search", plan_id=f"plan-{i}", root_plan_id=f"plan-{i}", root_started_at=at,
        started_at=at, duration_ms=1.0, outcome="ok",
    )  # fmt: skip
    plan = PlanRecord(
        plan_id=f"plan-{i}", root_plan_id=f"plan-{i}", root_started_at=at, started_at=at,
        ended_at=at + timedelta(seconds=1), duration_ms=1000.0, phases_ms={},
    )  # fmt: skip
    return tool, plan


@pytest.mark.slow
def test_version_eight_over_rows_of_version_six_while_a_writer_stores(database_url: str) -> None:
    """The old rows become the legacy partition unchanged; a writer storing throughout
    the migration (twice, from two processes) loses nothing and fails nothing."""
    old = [numbered_trace(i, started_at=_day(-(i % 4), hour=i % 24)) for i in range(400)]
    trees = [_tree(_day(-2), i) for i in range(5)]
    with psycopg.connect(database_url) as conn:
        at_schema_version(conn, 6)
    with database.create_pool(database_url, min_size=1, max_size=2, lock_timeout_ms=5000) as pool:
        repo = LLMTraceRepository(pool)
        samples = [(str(uuid.uuid4()), 0, numbered_sample(i)) for i in range(30)]
        repo.store(old, samples, tool_calls=[t for t, _ in trees], plans=[p for _, p in trees])
        written: list[uuid.UUID] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set() or i < 3:
                batch = [numbered_trace(1000 + i * 10 + k, started_at=NOW) for k in range(10)]
                try:
                    repo.store(batch)
                except BaseException as error:
                    errors.append(error)
                    return
                written.extend(t.trace_id for t in batch)
                i += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            applied = migrate_from_processes(database_url)
        finally:
            stop.set()
            thread.join(timeout=60)
        assert errors == []
        assert sorted(applied) == [
            (),
            ("0007_cost_rollup", "0008_daily_partitions", "0009_rollup_on_partitions"),
        ]
        with psycopg.connect(database_url) as conn:
            again = migrations.migrate(conn)
            # The rollup, rebuilt by schema 9 and kept by the parent's triggers since,
            # counts every call the writer stored across the migration once.
            assert conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM llm_cost_hourly"
            ).fetchone() == (
                conn.execute("SELECT count(*) FROM llm_traces").fetchone()[0],  # type: ignore[index]
            )
        assert (again.applied, again.partitions) == ((), ())
        assert migrations.check_schema(pool) == migrations.latest_version()
        # The keys built ahead became the old tables' primary keys: no stray index left.
        assert (
            scalar(database_url, "SELECT count(*) FROM pg_class WHERE relname LIKE '%key_v8'") == 0
        )
        assert scalar(database_url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0

        # Every row once: the old ones unchanged, the writer's all there.
        assert scalar(database_url, "SELECT count(*) FROM llm_traces") == len(old) + len(written)
        assert scalar(database_url, "SELECT count(*) FROM llm_traces_legacy") >= len(old)
        assert [repo.get(t.trace_id) for t in old[::37]] == old[::37]
        assert scalar(database_url, "SELECT count(*) FROM metric_samples") == 30
        for table in ("llm_traces", "metric_samples", "tool_calls", "plans"):
            names = _names(database_url, table)
            assert names[-1] == f"{table}_default"
            assert partitions.partition_name(table, TODAY + timedelta(days=1)) in names
        # tool_calls and plans held rows: legacy; metric_samples too.
        assert "plans_legacy" in _names(database_url, "plans")

        # A redelivery of old rows is still met by the legacy partition's new key.
        result = repo.store(old[:50], tool_calls=[t for t, _ in trees])
        assert (result.traces_inserted, result.traces_duplicate) == (0, 50)
        assert (result.tree_inserted, result.tree_duplicate) == (0, 5)

        # Once the legacy partition is old as a whole, prune drops it in one step.
        with psycopg.connect(database_url) as conn:
            [legacy] = [
                p for p in partitions.layout(conn, "llm_traces") if p.name.endswith("legacy")
            ]
        assert legacy.upper is not None
        legacy_rows = scalar(database_url, "SELECT count(*) FROM llm_traces_legacy")
        report = retention.prune(pool, legacy.upper, namespace=None)
        assert report.traces == legacy_rows
        assert "llm_traces_legacy" not in _names(database_url, "llm_traces")
        assert report.partitions_dropped >= 4


def test_a_redelivered_record_is_stored_once_wherever_its_day_lies(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
    # Today's partition, a day far ahead (default partition), a day long gone (default).
    traces = [llm_trace(started_at=at) for at in (NOW, _day(40), _day(-400))]
    tool, plan = _tree(_day(40), 1)
    samples = [(str(uuid.uuid4()), 0, numbered_sample(1, observed_at=NOW))]
    with database.create_pool(database_url, min_size=1, max_size=1) as pool:
        repo = LLMTraceRepository(pool)
        first = repo.store(traces, samples, tool_calls=[tool], plans=[plan])
        again = repo.store(traces, samples, tool_calls=[tool], plans=[plan])
        mixed = repo.store([*traces, llm_trace(started_at=NOW)])
        assert (first.traces_inserted, first.samples_inserted, first.tree_inserted) == (3, 1, 2)
        assert (again.traces_duplicate, again.samples_duplicate, again.tree_duplicate) == (3, 1, 2)
        assert (mixed.traces_inserted, mixed.traces_duplicate) == (1, 3)
        assert scalar(database_url, "SELECT count(*) FROM llm_traces") == 4
        assert scalar(database_url, "SELECT count(*) FROM llm_traces_default") == 2
        assert [repo.get(t.trace_id) for t in traces] == traces
        # The key is (trace_id, started_at): the same id at another time is another row.
        # Only a producer reusing its ids makes one; a redelivery carries its own time.
        moved = traces[0].model_copy(update={"started_at": NOW - timedelta(seconds=1)})
        assert repo.store([moved]).traces_inserted == 1

        # Rows in the default partition move when their day's partition is made.
        with psycopg.connect(database_url) as conn:
            made = partitions.ensure(conn, days_ahead=1, today=TODAY + timedelta(days=40))
            conn.commit()
        assert partitions.partition_name("llm_traces", TODAY + timedelta(days=40)) in made
        assert scalar(database_url, "SELECT count(*) FROM llm_traces_default") == 1
        name = partitions.partition_name("tool_calls", TODAY + timedelta(days=40))
        assert scalar(database_url, f"SELECT count(*) FROM {name}") == 1
        assert repo.get(traces[1].trace_id) == traces[1]
        assert repo.store(traces[1:2]).traces_duplicate == 1


def test_prune_drops_whole_days_and_deletes_in_batches_at_the_boundary(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
        partitions.ensure(conn, days_ahead=0, today=TODAY - timedelta(days=5))
        for offset in range(-5, 0):
            partitions.ensure(conn, days_ahead=0, today=TODAY + timedelta(days=offset))
    with database.create_pool(database_url, min_size=1, max_size=1) as pool:
        repo = LLMTraceRepository(pool)
        # 4 and 3 days ago: namespace a only; 5 days ago: a and b; 2 days ago at 06:00
        # and 18:00 around the cutoff; today.
        rows = {
            "a": [_day(-5), _day(-4), _day(-4, 1), _day(-3), _day(-2, 6), _day(-2, 18), NOW],
            "b": [_day(-5, 3), _day(-2, 5)],
        }
        for namespace, times in rows.items():
            repo.store([llm_trace(started_at=at) for at in times], namespace=namespace)
    cutoff_age = NOW - _day(-2)  # the cutoff falls at noon two days ago

    age = f"{int(cutoff_age.total_seconds())}s"
    code = main(["prune", "--older-than", age, "--namespace", "a", "--batch-rows", "1",
                 "--json", "--database-url", database_url])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(report) == {
        "namespace", "dry_run", "older_than", "traces", "samples", "tool_calls", "plans"
    }  # fmt: skip
    assert (report["namespace"], report["traces"]) == ("a", 5)
    names = _names(database_url, "llm_traces")
    day = lambda offset: partitions.partition_name("llm_traces", TODAY + timedelta(days=offset))  # noqa: E731
    # Whole days of namespace a only: dropped; the day shared with b: batched.
    assert day(-4) not in names and day(-3) not in names
    assert day(-5) in names and day(-2) in names
    assert scalar(database_url, f"SELECT count(*) FROM {day(-5)}") == 1
    assert scalar(database_url, f"SELECT count(*) FROM {day(-2)}") == 2  # a at 18:00, b

    with database.create_pool(database_url, min_size=1, max_size=1) as pool:
        everything = retention.prune(pool, _day(-2), namespace=None, batch_rows=1)
    assert (everything.traces, everything.partitions_dropped) == (2, 1)
    assert day(-5) not in _names(database_url, "llm_traces")
    assert scalar(database_url, "SELECT count(*) FROM llm_traces") == 2


def test_a_time_ordered_id_is_looked_up_in_its_days_only(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
    made_at = NOW
    near = llm_trace(trace_id=uuid7(made_at), started_at=made_at - timedelta(seconds=3))
    # An id whose time says nothing true about the call: found by the fallback.
    far = llm_trace(trace_id=uuid7(_day(-300)), started_at=NOW)
    with database.create_pool(database_url, min_size=1, max_size=1) as pool:
        repo = LLMTraceRepository(pool)
        repo.store([near, far])
        assert repo.get(near.trace_id) == near
        assert repo.get(far.trace_id) == far
        assert repo.get(uuid7(NOW)) is None
    window = partitions.id_window(near.trace_id)
    assert window is not None and window[0] < near.started_at < window[1]
    assert partitions.id_window(uuid.uuid4()) is None
    assert (
        partitions.id_window(uuid.UUID(int=(0xFFFF_FFFF_FFFF << 80) | (0x7 << 76) | (2 << 62)))
        is None
    )
    with psycopg.connect(database_url) as conn:
        plan = "\n".join(
            str(row[0])
            for row in conn.execute(
                "EXPLAIN SELECT * FROM llm_traces WHERE trace_id = %s "
                "AND started_at >= %s AND started_at < %s",
                (near.trace_id, *window),
            )
        )
    scanned = {name for name in _names(database_url, "llm_traces") if name in plan}
    days = (window[1].date() - window[0].date()).days
    expected = {
        partitions.partition_name("llm_traces", window[0].date() + timedelta(days=k))
        for k in range(days + 1)
    }
    assert scanned <= expected | {"llm_traces_default"}
    assert partitions.partition_name("llm_traces", TODAY) in scanned
    assert partitions.partition_name("llm_traces", TODAY + timedelta(days=5)) not in scanned


def test_the_days_made_ahead_come_from_the_environment() -> None:
    assert settings.partition_days_ahead({}) == 7
    assert settings.partition_days_ahead({settings.PARTITION_DAYS_VARIABLE: " 30 "}) == 30
    for bad in ("-1", "367", "a week", "1.5"):
        with pytest.raises(ConfigurationError, match="FLEETTRACE_PARTITION_DAYS_AHEAD must be"):
            settings.partition_days_ahead({settings.PARTITION_DAYS_VARIABLE: bad})


def test_erasure_removes_one_persons_rows_from_every_partition_and_nobody_elses(
    database_url: str,
) -> None:
    """A row's ctid names it only within its partition: the first row of each
    partition has the same one."""
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
    mine = [llm_trace(user_id="u-1", started_at=at) for at in (NOW, _day(-1), _day(50))]
    theirs = [llm_trace(user_id="u-2", started_at=at) for at in (_day(-1, 1), _day(50, 1))]
    other_day = llm_trace(user_id="u-2", started_at=NOW - timedelta(seconds=1))
    with database.create_pool(database_url, min_size=1, max_size=1) as pool:
        repo = LLMTraceRepository(pool)
        repo.store([theirs[0]])
        repo.store([mine[0], mine[1], other_day, mine[2], theirs[1]])
        report = erasure.erase(pool, "user", "u-1", batch_rows=1)
        assert report.removed == {"llm_traces": 3}
        assert [repo.get(t.trace_id) for t in mine] == [None] * 3
        assert [repo.get(t.trace_id) for t in (*theirs, other_day)] == [*theirs, other_day]


@pytest.mark.slow
def test_a_running_worker_makes_the_coming_days_partitions(
    database_url: str, redis_url: str, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)  # one day ahead (the tests' setting)
    monkeypatch.setenv(settings.PARTITION_DAYS_VARIABLE, "3")
    later = partitions.partition_name("plans", TODAY + timedelta(days=3))
    assert later not in _names(database_url, "plans")
    with serving_worker(redis_url, database_url, keys):
        wait_until(
            lambda: later in _names(database_url, "plans"), message="the worker's partitions"
        )
