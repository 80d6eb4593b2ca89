"""Several processes, forked and spawned, each with threads, record at once: every record
is in the stream exactly once and the counters equal the sums of what was recorded."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import pytest
import redis

import fleettrace
from fleettrace import LLMTrace, MetricKey
from fleettrace.keys import Keys
from tests.emitting import emitter_figures, live_hash, stream_records

RECORDS_PER_PROCESS = 3000
THREADS_PER_PROCESS = 2
OBSERVE_EVERY = 10


def trace_id(worker: int, i: int) -> uuid.UUID:
    return uuid.UUID(int=worker * 1_000_000 + i + 1)


def produce(redis_url: str, namespace: str, worker: int) -> None:
    """Runs in the child. No flush or close: the emitter drains when the process ends."""
    emitter = fleettrace.configure(redis_url, namespace, max_batch_records=200)

    def run(start: int) -> None:
        for i in range(start, RECORDS_PER_PROCESS, THREADS_PER_PROCESS):
            emitter.record(
                LLMTrace(
                    trace_id=trace_id(worker, i),
                    provider="openai",
                    model="gpt-4o",
                    prompt_tokens=i,
                    completion_tokens=worker,
                    plan_id=f"plan-{worker}",
                    cost_usd=0.25,
                )
            )
            if i % OBSERVE_EVERY == 0:
                emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, i % 50, {"tool": "grep"})

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS_PER_PROCESS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.slow
def test_forked_and_spawned_processes_record_exactly_once(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    # The parent has a live emitter with records in flight when it forks.
    parent = fleettrace.configure(redis_url, keys.namespace, flush_interval_s=30)
    parent.record(LLMTrace(trace_id=trace_id(0, 0), provider="openai", model="gpt-4o"))
    workers = {1: "fork", 2: "fork", 3: "spawn", 4: "spawn"}
    processes = [
        multiprocessing.get_context(method).Process(
            target=produce, args=(redis_url, keys.namespace, worker)
        )
        for worker, method in workers.items()
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    assert parent.close(10)

    ids = [r.trace_id for r in stream_records(redis_client, keys.traces)]  # type: ignore[union-attr]
    expected = {trace_id(0, 0)} | {
        trace_id(w, i) for w in workers for i in range(RECORDS_PER_PROCESS)
    }
    assert len(ids) == len(expected)
    assert set(ids) == expected

    tokens = live_hash(redis_client, keys, "actor.token_usage")
    prompt = "provider=openai,model=gpt-4o,token_type=prompt"
    completion = "provider=openai,model=gpt-4o,token_type=completion"
    assert int(tokens[(prompt, "count")]) == len(expected)
    assert float(tokens[(prompt, "sum")]) == len(workers) * sum(range(RECORDS_PER_PROCESS))
    assert float(tokens[(completion, "sum")]) == RECORDS_PER_PROCESS * sum(workers)
    for worker in workers:
        cost = redis_client.hget(keys.plan(f"plan-{worker}"), "plan.cost_usd||sum")
        assert float(cost or 0) == 0.25 * RECORDS_PER_PROCESS

    samples = stream_records(redis_client, keys.metrics)
    per_process = len(range(0, RECORDS_PER_PROCESS, OBSERVE_EVERY))
    assert len(samples) == len(workers) * per_process
    tool = live_hash(redis_client, keys, "tool.invocation_duration_ms")
    assert int(tool[("tool=grep", "count")]) == len(workers) * per_process
    assert (
        sum(int(v) for (_, stat), v in tool.items() if stat.startswith("d="))
        == len(workers) * per_process
    )

    figures = emitter_figures(redis_client, keys)
    assert figures["records"] == len(expected) + len(samples)
    assert "dropped" not in figures


def record_on_the_inherited_emitter(start: int) -> None:
    """Runs in a forked child: records on the emitter it inherited, no flush or close."""
    emitter = fleettrace.get_emitter()
    for i in range(start, start + 3):
        emitter.record(LLMTrace(trace_id=trace_id(9, i), provider="openai", model="gpt-4o"))


def test_a_forked_child_records_on_the_inherited_emitter_under_an_id_of_its_own(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    """The parent has already applied batches 1..3 when it forks; the child numbers its
    own batches from 1 again, which must not be taken for re-sends of the parent's."""
    parent = fleettrace.configure(redis_url, keys.namespace, flush_interval_s=0.01)
    for i in range(3):
        parent.record(LLMTrace(trace_id=trace_id(0, i), provider="openai", model="gpt-4o"))
        assert parent.flush(30)
    child = multiprocessing.get_context("fork").Process(
        target=record_on_the_inherited_emitter, args=(0,)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert parent.close(10)
    ids = {r.trace_id for r in stream_records(redis_client, keys.traces)}  # type: ignore[union-attr]
    assert ids == {trace_id(0, i) for i in range(3)} | {trace_id(9, i) for i in range(3)}
    assert len(list(redis_client.scan_iter(keys.emitter_seq_pattern))) == 2
