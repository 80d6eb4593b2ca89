"""The ``otlp`` group through a backend outage under load, and its throughput."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

import pytest
import redis

from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace_worker.forward.otlp.group import OtlpLoop, loop_settings
from fleettrace_worker.forward.otlp.spans import llm_span_id
from fleettrace_worker.keys import OTLP_GROUP
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters
from tests.emitting import make_emitter
from tests.factories import add_traces
from tests.otlp_receiver import OtlpReceiver
from tests.test_otlp import llm_spans, pending, settings_for, trace

#: Ten times the loop's longest backoff (1 s) and five times its request timeout (2 s):
#: every export fails again and again, at the capped pace, before the backend returns.
OUTAGE_S: Final = 10.0
#: Upper bound on waiting for the backlog to drain; only a failing run reaches it.
DRAIN_LIMIT_S: Final = 120.0


def _loop(client: redis.Redis, keys: Keys, receiver: OtlpReceiver, *, burst: bool) -> OtlpLoop:
    settings = settings_for(receiver, retry_for_s=3600.0, backoff_max_s=1.0)
    consumer = Consumer(client, keys, OTLP_GROUP, "otlp-1", claim_idle_ms=60_000)
    base = replace(loop_settings(settings), burst=burst, block_ms=100)
    return OtlpLoop(consumer, settings, namespace=keys.namespace, loop=base)


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["503", "refused"])
def test_backend_down_for_10_s_under_load_loses_nothing_and_sends_nothing_twice(
    outage: str, redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    """The backend answers 503 (or refuses connections: nothing listens on its port)
    for 10 s while an emitter keeps sending, then comes back."""
    first = OtlpReceiver()
    with first:
        first.down.set()
        loop = _loop(redis_client, keys, first, burst=False)
    # ``first`` stopped: with "refused" a new receiver takes its port after the outage.
    receiver = first
    if outage == "503":
        receiver = OtlpReceiver(first.server.server_address[1])
        receiver.down.set()
        receiver.__enter__()
    stop = threading.Event()
    worker = threading.Thread(target=loop.run, args=(stop,))
    worker.start()
    emitter = make_emitter(redis_url, keys)
    sent: list[LLMTrace] = []
    try:
        began = time.monotonic()
        # Load through the outage: the emitter keeps recording while every export fails.
        while time.monotonic() - began < OUTAGE_S:
            for i in range(50):
                record = trace(f"plan-{len(sent) % 7}", actor=f"a-{i % 3}")
                emitter.record(record)
                sent.append(record)
            stop.wait(0.05)
        assert emitter.flush()
        assert loop.stats.retries > 0
        assert receiver.spans() == []
        if outage == "503":
            assert receiver.received.statuses[503] > 0
            receiver.down.clear()
        else:
            assert "cannot connect to the OTLP endpoint" in (loop.stats.last_error or "")
            receiver = OtlpReceiver(first.server.server_address[1]).__enter__()
        deadline = time.monotonic() + DRAIN_LIMIT_S
        while len(llm_spans(receiver)) < len(sent) and time.monotonic() < deadline:
            stop.wait(0.1)
    finally:
        stop.set()
        worker.join()
        loop.close()
        emitter.close()
        if receiver is not first:
            receiver.__exit__()
    calls = llm_spans(receiver)
    ids = [span.span_id for span in calls]
    assert len(ids) == len(set(ids)) == len(sent)
    assert set(ids) == {llm_span_id(r) for r in sent}
    assert list_dead_letters(redis_client, keys, OTLP_GROUP) == []
    assert pending(redis_client, keys) == 0


@pytest.mark.slow
def test_throughput_spans_per_second_to_the_local_receiver(
    redis_client: redis.Redis, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prints the spans/s one loop exports (docs/otlp.md quotes it); asserts only
    that every record arrived."""
    total = 20_000
    started = datetime.now(UTC)
    records = [
        trace(f"plan-{i % 50}", actor=f"a-{i % 5}", decision_id=f"d-{i % 200}", started_at=started)
        for i in range(total)
    ]
    for start in range(0, total, 500):
        add_traces(redis_client, keys, records[start : start + 500])
    with OtlpReceiver() as receiver:
        loop = _loop(redis_client, keys, receiver, burst=True)
        began = time.perf_counter()
        loop.run(threading.Event())
        elapsed = time.perf_counter() - began
        loop.close()
        assert len(llm_spans(receiver)) == total
    with capsys.disabled():
        print(
            f"\notlp: {total} records, {loop.spans_sent} spans in {elapsed:.2f} s: "
            f"{total / elapsed:,.0f} LLM spans/s, {loop.spans_sent / elapsed:,.0f} spans/s"
        )
