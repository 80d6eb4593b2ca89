"""Building blocks of the worker tests: real entries in the real format, a migrated
database, and counts of what landed where."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
import redis

from fleettrace.codec import Kind, encode_batch, new_batch_id
from fleettrace.keys import PERSIST_GROUP, Keys
from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace, MetricSample
from fleettrace_worker.migrations import migrate

ROOT = Path(__file__).resolve().parent.parent


def make_trace(i: int, *, model: str = "gpt-4o", plan: str | None = None) -> LLMTrace:
    return LLMTrace(
        plan_id=plan or f"plan-{i % 7}",
        decision_id=f"d-{i}",
        actor="planner",
        provider="openai",
        model=model,
        prompt_tokens=100 + i % 50,
        completion_tokens=20 + i % 9,
        latency_ms=float(10 + i % 100),
        tool_calls=["search"] if i % 3 == 0 else [],
    )


def make_sample(i: int) -> MetricSample:
    return MetricSample(
        key=MetricKey.TOOL_INVOCATION_DURATION_MS, labels={"tool": "search"}, value=float(i)
    )


def add_traces(client: redis.Redis, keys: Keys, traces: Sequence[LLMTrace]) -> str:
    """XADD one entry holding ``traces``; returns its entry id."""
    entry_id = client.xadd(keys.traces, encode_batch(Kind.TRACE, traces, new_batch_id()))  # type: ignore[arg-type]
    return entry_id.decode()


def add_samples(client: redis.Redis, keys: Keys, samples: Sequence[MetricSample]) -> str:
    entry_id = client.xadd(keys.metrics, encode_batch(Kind.METRIC, samples, new_batch_id()))  # type: ignore[arg-type]
    return entry_id.decode()


def migrated(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
    return database_url


def scalar(database_url: str, query: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def trace_rows(database_url: str) -> int:
    return scalar(database_url, "SELECT count(*) FROM llm_traces")


def sample_rows(database_url: str) -> int:
    return scalar(database_url, "SELECT count(*) FROM metric_samples")


def pending(client: redis.Redis, keys: Keys, group: str = PERSIST_GROUP) -> int:
    total = 0
    for stream in keys.streams:
        if client.exists(stream):
            for info in client.xinfo_groups(stream):
                if info["name"].decode() == group:
                    total += int(info["pending"])
    return total


def wait_for(
    condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def worker_env(redis_url: str, database_url: str, keys: Keys) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LANGCHAIN_", "LANGSMITH_", "OTEL_"))
    }
    env.update(
        FLEETTRACE_REDIS_URL=redis_url,
        FLEETTRACE_DATABASE_URL=database_url,
        FLEETTRACE_NAMESPACE=keys.namespace,
        FLEETTRACE_LOG_LEVEL="WARNING",
    )
    return env


def fleettrace(
    *args: str, env: dict[str, str], timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleettrace_worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=ROOT,
    )


def start_worker(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleettrace_worker.cli", "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
