"""Fleets kept apart in Redis: dead letters, live counters and consumer groups are keys
of one namespace, and every command that reads or changes them works within the one
``--namespace`` names, says which, and never touches another's."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from fleettrace.codec import Kind, encode_record
from fleettrace.keys import Keys
from fleettrace_worker.cli import main
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.stream.deadletter import DeadLetter
from tests.emitting import make_emitter
from tests.factories import metric_sample, numbered_trace


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


# dead letters (Redis, one stream per namespace) -------------------------------------


@pytest.fixture
def two_namespaces(redis_client: redis.Redis) -> Iterator[tuple[Keys, Keys]]:
    spaces = (Keys(f"test-{uuid.uuid4().hex[:12]}"), Keys(f"test-{uuid.uuid4().hex[:12]}"))
    yield spaces
    for keys in spaces:
        for key in redis_client.scan_iter(match=f"{keys.prefix}*", count=1000):
            redis_client.delete(key)


def _letter(client: redis.Redis, keys: Keys, reason: str, entry_id: str = "*") -> str:
    """A dead letter of one valid record of ``keys``' trace stream (so that a replay
    takes it); its id."""
    letter = DeadLetter.for_record(
        keys.traces,
        "1-0",
        "c1",
        batch_id=uuid.uuid4().hex,
        kind=Kind.TRACE,
        position=0,
        record=encode_record(numbered_trace(1)),
        reason=reason,
    )
    dead = keys.dead_letters(PERSIST_GROUP)
    return client.xadd(dead, letter.to_fields(), id=entry_id).decode()  # type: ignore[arg-type,union-attr]


def _dlq(
    capsys: pytest.CaptureFixture[str], redis_url: str, keys: Keys, *argv: str
) -> tuple[int, str]:
    code, out, _ = _run(
        capsys, "dlq", *argv, "--redis-url", redis_url, "--namespace", keys.namespace
    )
    return code, out


def _letters(client: redis.Redis, keys: Keys) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(keys.dead_letters(PERSIST_GROUP))]


def test_dead_letters_never_cross_namespaces(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    redis_client: redis.Redis,
    two_namespaces: tuple[Keys, Keys],
) -> None:
    a, b = two_namespaces
    mine = [_letter(redis_client, a, "bad in a"), _letter(redis_client, a, "bad in a")]
    # An id A's stream cannot hold (two streams may well share ids made in the same ms).
    theirs = [_letter(redis_client, b, "bad in b", entry_id="1-1")]

    code, out = _dlq(capsys, redis_url, a, "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [item["id"] for item in listed["items"]] == mine
    assert listed["namespace"] == a.namespace
    assert {item["namespace"] for item in listed["items"]} == {a.namespace}
    code, out = _dlq(capsys, redis_url, a, "list", "--jsonl")
    assert [json.loads(line)["namespace"] for line in out.splitlines()] == [a.namespace] * 2
    code, out = _dlq(capsys, redis_url, a, "list")
    assert out.splitlines()[-1] == (
        f"2 dead letters in group {PERSIST_GROUP} of namespace {a.namespace!r}"
    )

    # B's letter is not A's to delete, replay or purge.
    code, out = _dlq(capsys, redis_url, a, "delete", "--id", theirs[0], "--yes")
    assert code == 1 and f"{theirs[0]}: no such dead letter" in out
    assert f"of namespace {a.namespace!r}" in out
    code, out = _dlq(capsys, redis_url, a, "replay", "--id", theirs[0])
    assert code == 1 and f"{theirs[0]}: no such dead letter" in out
    assert _letters(redis_client, b) == theirs

    code, out = _dlq(capsys, redis_url, a, "replay", "--all")
    assert out.strip().endswith(f"(group {PERSIST_GROUP} of namespace {a.namespace!r})")
    assert redis_client.xlen(a.traces) == 2 and redis_client.xlen(b.traces) == 0
    assert _letters(redis_client, b) == theirs

    _letter(redis_client, a, "again in a")
    code, out = _dlq(capsys, redis_url, a, "purge", "--older-than", "0s", "--yes")
    assert code == 0 and out.startswith("purged ")
    assert out.strip().endswith(f"of namespace {a.namespace!r}")
    assert _letters(redis_client, a) == []
    assert _letters(redis_client, b) == theirs

    code, out = _dlq(capsys, redis_url, b, "list", "--json")
    assert [item["namespace"] for item in json.loads(out)["items"]] == [b.namespace]


# live metrics (Redis) ---------------------------------------------------------------


def test_metrics_read_one_namespace_and_say_which(
    capsys: pytest.CaptureFixture[str], redis_url: str, two_namespaces: tuple[Keys, Keys]
) -> None:
    for keys, count in zip(two_namespaces, (3, 2), strict=True):
        with make_emitter(redis_url, keys) as emitter:
            for i in range(count):
                emitter.record(metric_sample(value=float(i + 1)))
            assert emitter.flush(10)
    for keys, count in zip(two_namespaces, (3, 2), strict=True):
        argv = ("metrics", "--key", "tool.invocation_duration_ms", "--redis-url", redis_url)
        code, out, _ = _run(capsys, *argv, "--json", "--namespace", keys.namespace)
        assert code == 0
        listed = json.loads(out)
        [series] = listed["items"]
        assert (listed["namespace"], series["count"]) == (keys.namespace, count)
        code, out, _ = _run(capsys, *argv, "--namespace", keys.namespace)
        assert out.splitlines()[0].strip() == f"live counters of namespace {keys.namespace!r}"


def test_groups_say_their_namespace(
    capsys: pytest.CaptureFixture[str], redis_url: str, two_namespaces: tuple[Keys, Keys]
) -> None:
    a, _ = two_namespaces
    code, out, _ = _run(
        capsys, "groups", "list", "--redis-url", redis_url, "--namespace", a.namespace
    )
    assert code == 0 and out.strip() == f"no consumer groups in namespace {a.namespace!r}"
