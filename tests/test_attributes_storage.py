"""Attributes in PostgreSQL (schema version 4) against the machine's database: the
migration over rows of version 3, from two processes and twice; the COPY path and
its partial indexes; the ``traces list/cost`` filters; ``erase`` and ``prune``."""

from __future__ import annotations

import io
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from fleettrace.model import LLMTrace
from fleettrace_worker.cli import main
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.store.trace_filter import TraceFilter
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.loop import LoopSettings
from tests.factories import llm_trace
from tests.worker_helpers import at_schema_version, migrate_from_processes, migrated, scalar

AT = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
WIRE = Path(__file__).resolve().parent / "fixtures" / "wire"


def _at_version_three(url: str) -> list[uuid.UUID]:
    """A database as schema version 3 left it, with rows its worker wrote."""
    ids = [uuid.UUID(int=i + 1) for i in range(3)]
    with psycopg.connect(url) as conn:
        at_schema_version(conn, 3)
        for i, trace_id in enumerate(ids):
            conn.execute(
                "INSERT INTO llm_traces (trace_id, plan_id, provider, model, prompt_tokens, "
                "completion_tokens, cost_usd, latency_ms, tool_calls, streaming, retry_count, "
                "started_at, cache_read_tokens, producer, namespace) VALUES (%s, 'plan-old', "
                "'openai', 'gpt-4o', %s, 20, 0.001, 12.5, ARRAY['search'], false, 0, %s, 5, "
                "'agent-1', 'fleettrace')",
                (trace_id, 100 + i, AT),
            )
    return ids


def _store(url: str, traces: list[LLMTrace]) -> None:
    with database.create_pool(url, min_size=1, max_size=1) as pool:
        LLMTraceRepository(pool).store(traces)


def test_version_four_applies_once_from_two_processes_over_rows_of_version_three(
    database_url: str,
) -> None:
    ids = _at_version_three(database_url)
    later = tuple(f"{m.version:04d}_{m.name}" for m in migrations.available() if m.version > 3)
    assert later[0] == "0004_attributes"
    assert migrate_from_processes(database_url) == [(), later]
    with psycopg.connect(database_url) as conn:
        again = migrations.migrate(conn)
    assert again.applied == () and again.from_version == migrations.latest_version()
    with database.create_pool(database_url, min_size=1, max_size=1) as pool:
        repo = LLMTraceRepository(pool)
        old = [repo.get(trace_id) for trace_id in ids]
        assert [t.prompt_tokens for t in old if t] == [100, 101, 102]
        assert all(
            t is not None
            and (t.tags, t.metadata, t.user_id, t.session_id, t.ttft_ms)
            == ([], {}, None, None, None)
            for t in old
        )
        new = llm_trace(
            tags=["prod", "eu"],
            metadata={"team": "search", "tier": 2, "ratio": 0.5, "beta": True},
            user_id="user-1",
            session_id="session-1",
            ttft_ms=4.25,
            started_at=AT,
        )
        repo.store([new])
        assert repo.get(new.trace_id) == new
    indexes = {
        name: definition
        for name, definition in psycopg.connect(database_url)
        .execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'llm_traces'")
        .fetchall()
    }
    for name, column in (
        ("llm_traces_tags_idx", "tags"),
        ("llm_traces_metadata_idx", "metadata"),
        ("llm_traces_user_idx", "user_id"),
        ("llm_traces_session_idx", "session_id"),
    ):
        assert f"WHERE ({column} IS NOT NULL)" in indexes[name]


def test_rows_without_attributes_are_null_and_grow_no_attribute_index(database_url: str) -> None:
    db = migrated(database_url)
    indexes = ("llm_traces_tags_idx", "llm_traces_metadata_idx", "llm_traces_user_idx",
               "llm_traces_session_idx")  # fmt: skip
    query = "SELECT " + ", ".join(f"pg_relation_size('{name}')" for name in indexes)
    with psycopg.connect(db) as conn:
        before = conn.execute(query).fetchone()
    _store(
        db, [llm_trace(), llm_trace(tags=[], metadata={})] * 1 + [llm_trace() for _ in range(2000)]
    )
    with psycopg.connect(db) as conn:
        after = conn.execute(query).fetchone()
    assert after == before
    assert scalar(db, "SELECT count(*) FROM llm_traces WHERE tags IS NULL") == 2002
    assert scalar(db, "SELECT count(*) FROM llm_traces WHERE metadata IS NOT NULL") == 0


@pytest.mark.parametrize(
    ("check", "value"),
    [("tags", "ARRAY[]::text[]"), ("metadata", "'[1]'::jsonb"), ("metadata", "'{}'::jsonb")],
)
def test_the_checks_refuse_empty_or_malformed_attributes(
    database_url: str, check: str, value: str
) -> None:
    db = migrated(database_url)
    with psycopg.connect(db) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO llm_traces (trace_id, provider, model, latency_ms, tool_calls, "
            f"streaming, retry_count, started_at, {check}) VALUES (gen_random_uuid(), 'p', "
            f"'m', 1, '{{}}', false, 0, now(), {value})"
        )


def test_a_v3_entry_is_stored_with_its_attributes(redis_client, keys, database_url) -> None:
    db = migrated(database_url)
    doc = json.loads((WIRE / "v3-traces.json").read_text())
    redis_client.xadd(keys.traces, {k.encode(): v.encode() for k, v in doc.items()})  # type: ignore[arg-type]
    with database.create_pool(db, min_size=1, max_size=1) as pool:
        consumer = Consumer(redis_client, keys, PERSIST_GROUP, "w1")
        loop = PersistLoop(consumer, LLMTraceRepository(pool), LoopSettings(burst=True), pool=pool)
        loop.run(threading.Event())
        first = LLMTraceRepository(pool).get(uuid.UUID(int=1))
    assert first is not None
    assert first.tags == ["prod", "eu"]
    assert first.metadata == {"team": "search", "tier": 2, "ratio": 0.5, "beta": True}
    assert (first.user_id, first.session_id, first.ttft_ms) == ("user-1", "session-1", 4.25)
    assert scalar(db, "SELECT count(*) FROM llm_traces WHERE user_id = 'user-2'") == 1


@pytest.fixture
def people(database_url: str) -> str:
    db = migrated(database_url)
    now = datetime.now(UTC)
    _store(
        db,
        [
            llm_trace(tags=["prod", "eu"], metadata={"tier": 2}, user_id="alice",
                      session_id="s1", cost_usd=1.0, started_at=now - timedelta(minutes=3)),
            llm_trace(tags=["prod"], metadata={"tier": "2", "team": "x"}, user_id="alice",
                      session_id="s2", cost_usd=2.0, started_at=now - timedelta(minutes=2)),
            llm_trace(tags=["dev"], metadata={"beta": True}, user_id="bob",
                      session_id="s3", cost_usd=4.0, started_at=now - timedelta(minutes=1)),
            llm_trace(cost_usd=8.0, started_at=now),
        ],
    )  # fmt: skip
    return db


def _listed(capsys: pytest.CaptureFixture[str], db: str, *argv: str) -> list[str | None]:
    code = main(["traces", "list", "--json", "--database-url", db, *argv])
    out = capsys.readouterr().out
    assert code == 0
    return [item["user_id"] for item in json.loads(out)["items"]]


def test_list_and_cost_filter_by_tag_meta_user_and_session(
    capsys: pytest.CaptureFixture[str], people: str
) -> None:
    assert _listed(capsys, people, "--tag", "prod") == ["alice", "alice"]
    assert _listed(capsys, people, "--tag", "prod", "--tag", "eu") == ["alice"]
    assert _listed(capsys, people, "--meta", "tier=2") == ["alice", "alice"]  # 2 and "2"
    assert _listed(capsys, people, "--meta", "tier=2", "--meta", "team=x") == ["alice"]
    assert _listed(capsys, people, "--meta", "beta=true") == ["bob"]
    assert _listed(capsys, people, "--user", "bob") == ["bob"]
    assert _listed(capsys, people, "--session", "s2") == ["alice"]
    assert _listed(capsys, people, "--user", "nobody") == []
    code = main(["traces", "cost", "--json", "--by", "model", "--database-url", people,
                 "--user", "alice"])  # fmt: skip
    [row] = json.loads(capsys.readouterr().out)["items"]
    assert code == 0 and (row["calls"], row["cost_usd"]) == (2, 3.0)


def test_a_meta_filter_without_equals_is_one_clean_line(
    capsys: pytest.CaptureFixture[str], people: str
) -> None:
    code = main(["traces", "list", "--database-url", people, "--meta", "tier"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "--meta takes KEY=VALUE, got 'tier'" in err


def test_filters_use_the_partial_indexes(people: str) -> None:
    with database.create_pool(people, min_size=1, max_size=1) as pool:
        where = TraceFilter(tags=("prod",), metadata=(("tier", "2"),), user_id="alice")
        assert [t.session_id for t in LLMTraceRepository(pool).query(where).items] == ["s2", "s1"]
    with psycopg.connect(people) as conn:
        conn.execute("SET enable_seqscan = off")
        for condition in (
            "tags @> ARRAY['prod']::text[]",
            """metadata @> '{"tier": 2}'""",
            "user_id = 'alice'",
            "session_id = 's1'",
        ):
            plan = "\n".join(
                row[0]
                for row in conn.execute(f"EXPLAIN SELECT * FROM llm_traces WHERE {condition}")
            )
            assert "llm_traces_" in plan and "_idx" in plan, plan


def test_erase_removes_a_users_rows_says_how_many_and_asks_first(
    capsys: pytest.CaptureFixture[str], people: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no answer: no
    assert main(["erase", "--user", "alice", "--database-url", people]) == 1
    captured = capsys.readouterr()
    assert "Remove every stored row of user 'alice' for good?" in captured.err
    assert captured.out.strip() == "nothing removed"
    assert scalar(people, "SELECT count(*) FROM llm_traces") == 4

    assert main(["erase", "--user", "alice", "--dry-run", "--json", "--database-url", people]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "user": "alice", "dry_run": True, "removed": {"llm_traces": 2}, "total": 2,
    }  # fmt: skip
    assert scalar(people, "SELECT count(*) FROM llm_traces") == 4

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["erase", "--user", "alice", "--batch-rows", "1", "--database-url", people]) == 0
    out = capsys.readouterr().out
    assert "llm_traces" in out and "removed 2 rows of user alice" in out
    assert scalar(people, "SELECT count(*) FROM llm_traces WHERE user_id = 'alice'") == 0
    assert scalar(people, "SELECT count(*) FROM llm_traces") == 2

    args = ["erase", "--session", "s3", "--yes", "--json", "--database-url", people]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == {"llm_traces": 1}
    assert main(args) == 0  # again: nothing left, and says so
    assert json.loads(capsys.readouterr().out)["total"] == 0
    assert scalar(people, "SELECT count(*) FROM llm_traces") == 1


@pytest.mark.parametrize(
    "argv",
    [["erase"], ["erase", "--user", "a", "--session", "b"], ["erase", "--user", "", "--yes"]],
)
def test_erase_refuses_bad_arguments_in_one_line(
    capsys: pytest.CaptureFixture[str], people: str, argv: list[str]
) -> None:
    try:
        code = main([*argv, "--database-url", people])
    except SystemExit as stop:  # argparse's usage error
        code = int(stop.code or 0)
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert len(err.strip().splitlines()[-1]) > 0
    assert scalar(people, "SELECT count(*) FROM llm_traces") == 4


def test_prune_removes_rows_with_attributes_like_any_other(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    db = migrated(database_url)
    old = datetime.now(UTC) - timedelta(days=40)
    _store(db, [llm_trace(tags=["a"], metadata={"k": 1}, user_id="u", started_at=old),
                llm_trace(tags=["a"], user_id="u")])  # fmt: skip
    assert main(["prune", "--older-than", "30d", "--database-url", db]) == 0
    assert "removed 1 traces" in capsys.readouterr().out
    assert scalar(db, "SELECT count(*) FROM llm_traces WHERE user_id = 'u'") == 1
