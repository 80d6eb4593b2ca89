"""Format version 3's own kinds through the persist group, against the machine's Redis
and PostgreSQL: the frozen tool and plan entries are what the encoder writes and are
stored; a bad tool or plan record is a dead letter with its reason while the good ones
of its entry are stored, and every record is accounted for."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fleettrace.codec import Kind, decode_entry, encode_batch, encode_lines, new_batch_id
from fleettrace.tree_records import PlanRecord, ToolCall
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.store.tree_queries import TreeQueries
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters
from fleettrace_worker.stream.loop import LoopSettings
from tests.worker_helpers import migrated, pending, scalar

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "wire"


def _fixture(name: str) -> dict[bytes, bytes]:
    doc = json.loads((FIXTURES / name).read_text())
    return {key.encode(): value.encode() for key, value in doc.items()}


@pytest.mark.parametrize("name", ["v3-tools.json", "v3-plans.json"])
def test_the_frozen_tree_entries_are_what_the_encoder_writes(name: str) -> None:
    fields = _fixture(name)
    batch = decode_entry(fields)
    assert batch.errors == [] and batch.records
    assert encode_batch(batch.kind, batch.records, batch.batch_id) == fields


def _persist(redis_client, keys, db: str) -> PersistLoop:
    with create_pool(db, min_size=1, max_size=1) as pool:
        consumer = Consumer(redis_client, keys, PERSIST_GROUP, "w1")
        loop = PersistLoop(consumer, LLMTraceRepository(pool), LoopSettings(burst=True), pool=pool)
        loop.run(threading.Event())
    return loop


def test_version_three_entries_of_every_kind_are_stored_as_one_tree(
    redis_client, keys, database_url
) -> None:
    db = migrated(database_url)
    for name in ("v3-traces.json", "v3-tools.json", "v3-plans.json", "v3-metrics.json"):
        stream = keys.metrics if "metrics" in name else keys.traces
        redis_client.xadd(stream, _fixture(name))  # type: ignore[arg-type]
    _persist(redis_client, keys, db)
    assert scalar(db, "SELECT count(*) FROM tool_calls") == 2
    assert scalar(db, "SELECT count(*) FROM plans") == 2
    assert pending(redis_client, keys) == 0
    with create_pool(db, min_size=1, max_size=1) as pool:
        tree = TreeQueries(pool).tree("plan-wire")
    assert tree is not None
    assert (tree.detail["status"], tree.detail["error"]) == ("error", "ValueError: over budget")
    assert [c.name for c in tree.children] == ["plan-child", "wire-0", "wire-1", "wire-2"]
    assert (tree.calls, tree.tool_calls, tree.errors) == (3, 2, 1)
    assert tree.cost_usd == pytest.approx(0.006)
    assert tree.children[0].detail["phases_ms"] == {"search": 7.5}


def test_bad_tree_records_are_dead_letters_and_the_good_ones_are_stored(
    redis_client, keys, database_url
) -> None:
    db = migrated(database_url)
    good_tool = ToolCall(tool="search")
    plan = PlanRecord.model_validate_json(_fixture("v3-plans.json")[b"d"].split(b"\n")[1])
    tool_line = json.loads(encode_batch(Kind.TOOL, [good_tool], new_batch_id())[b"d"])
    bad_tool = json.dumps({**tool_line, "call_id": "not-a-uuid"}).encode()
    plan_line = json.loads(encode_batch(Kind.PLAN, [plan], new_batch_id())[b"d"])
    bad_plan = json.dumps({**plan_line, "ended_at": "2020-01-01T00:00:00Z"}).encode()
    redis_client.xadd(
        keys.traces,
        encode_lines(Kind.TOOL, [json.dumps(tool_line).encode(), bad_tool], new_batch_id()),  # type: ignore[arg-type]
    )
    redis_client.xadd(
        keys.traces,
        encode_lines(Kind.PLAN, [bad_plan, json.dumps(plan_line).encode()], new_batch_id()),  # type: ignore[arg-type]
    )
    loop = _persist(redis_client, keys, db)
    letters = [letter for _, letter in list_dead_letters(redis_client, keys, PERSIST_GROUP)]
    reasons = sorted(letter.reason for letter in letters)
    assert reasons[0].startswith("call_id: Input should be a valid UUID")
    assert "ended_at must not be before started_at" in reasons[1]
    assert sorted(letter.kind for letter in letters) == ["o", "p"]
    stored = scalar(db, "SELECT count(*) FROM tool_calls") + scalar(
        db, "SELECT count(*) FROM plans"
    )
    assert stored == 2
    # Every record sent is a row or a dead letter.
    assert stored + len(letters) == 4
    assert (loop.stats.records, loop.stats.dead_letters) == (2, 2)
    assert pending(redis_client, keys) == 0
