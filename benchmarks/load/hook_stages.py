"""Where a hook-made LLM call's time goes, stage by stage, per record.

On the caller's thread (the median of many single timings, ``perf_counter_ns``
around each, the clock's own cost subtracted): the span made, entered, updated and
ended, and within the end the three things it does: take the stamp (id and time),
read the scope (four context variables: the actor is the span's) and append the
captured tuple to the buffer; the context variable through which an integration finds
the open call (set on entry, reset at the end); the tool and actor hooks whole.

On the sender thread (the mean per record over one batch of the captured calls):
making and validating the records, pricing them, encoding them with their counter
deltas, and applying the calls to Redis.

The emitter's sender thread is not started while the calls are captured (a
benchmark-only switch), so the caller's figures are the hook's own and the batch
is all there for the sender's stages.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from fleettrace.capture import Captured

from benchmarks.load.records import ACTORS, PLAN_METADATA, PLAN_TAGS, HookWorkload


def _median_ns(func: Callable[[], Any], rounds: int = 20_000) -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(rounds):
        started = clock()
        func()
        samples.append(clock() - started)
    samples.sort()
    return float(samples[len(samples) // 2])


def stage_profile(redis_url: str, calls: int) -> dict[str, Any]:
    import redis

    import fleettrace
    from fleettrace import attributes, ids, plan_scope
    from fleettrace.batch_script import load_library
    from fleettrace.batching import encode_calls
    from fleettrace.capture import build_llm
    from fleettrace.emitter import Emitter, EmitterSettings
    from fleettrace.llm_span import _llm_call as current_call
    from fleettrace.spans import DECISION_ID, PLAN_ID

    client = redis.Redis.from_url(redis_url)
    load_library(client)
    namespace = f"bench-stages-{uuid.uuid4().hex[:8]}"
    emitter = Emitter(
        EmitterSettings(redis_url=redis_url, namespace=namespace, max_buffer_records=10**7)
    )
    emitter._sender_running = True  # benchmark only: no sender while capturing
    workload = HookWorkload(calls)
    plan_state = plan_scope.var()
    gc.collect()
    caller: dict[str, float] = {}
    with (
        fleettrace.plan(emitter=emitter, tags=PLAN_TAGS, metadata=PLAN_METADATA),
        fleettrace.decision(emitter=emitter),
        fleettrace.actor(ACTORS[0], emitter=emitter) as agent,
    ):
        clock_ns = _median_ns(lambda: None)
        usage = workload.calls[0][2]

        def whole() -> None:
            with agent.llm("openai", "gpt-4o") as call:
                call.update(**usage)

        span = agent.llm("openai", "gpt-4o")
        caller["whole hook"] = _median_ns(whole) - clock_ns
        caller["span made (actor.llm)"] = (
            _median_ns(lambda: agent.llm("openai", "gpt-4o")) - clock_ns
        )

        def enter_exit() -> None:
            with span:
                pass

        def enter_update_exit() -> None:
            with span as call:
                call.update(**usage)

        caller["enter + exit"] = _median_ns(enter_exit) - clock_ns
        caller["update(**usage)"] = (
            _median_ns(enter_update_exit) - clock_ns - caller["enter + exit"]
        )
        next_count = ids._state.next_count

        def stamp() -> int:
            return ((time.time_ns() // 1000) << ids.STAMP_SHIFT) | (next_count() & ids.COUNTER_MASK)

        caller["  of the exit: id and time (the stamp)"] = _median_ns(stamp) - clock_ns

        def scope() -> None:
            PLAN_ID.get()
            DECISION_ID.get()
            attributes.current.get()
            plan_state.get()

        caller["  of the exit: scope read (4 context variables)"] = _median_ns(scope) - clock_ns
        item = cast("Captured", emitter._buffer[0])
        caller["  of the exit: buffer append (capture_one)"] = (
            _median_ns(lambda: emitter.capture_one(item)) - clock_ns
        )

        def open_call() -> None:
            current_call.reset(current_call.set(None))

        caller["  of enter + exit: the open call's ContextVar (set, reset)"] = (
            _median_ns(open_call) - clock_ns
        )

        def tool_hook() -> None:
            with fleettrace.tool("search", emitter=emitter):
                pass

        def actor_hook() -> None:
            with fleettrace.actor(ACTORS[1], emitter=emitter):
                pass

        caller["tool hook (made, entered, ended)"] = _median_ns(tool_hook) - clock_ns
        caller["actor hook (made, entered, ended)"] = _median_ns(actor_hook) - clock_ns
        emitter._buffer.clear()
        for provider, model, tokens, streaming, _ in workload.calls:
            with agent.llm(provider, model, streaming=streaming) as call:
                call.update(**tokens)
    items = [i for i in emitter._buffer if type(i) is tuple and i[0] is build_llm]
    emitter._buffer.clear()
    emitter._identify()
    per = 1e6 / len(items)
    sender: dict[str, float] = {}
    started = time.perf_counter()
    built, _ = emitter._build(items)
    sender["make + validate (LLMTrace)"] = (time.perf_counter() - started) * per
    started = time.perf_counter()
    priced = emitter.pricer.price_records(built)
    sender["price (genai-prices)"] = (time.perf_counter() - started) * per
    started = time.perf_counter()
    batches = [
        encode_calls(emitter.keys, emitter._emitter_id, emitter._next_seq, priced[i : i + 1000], 0)
        for i in range(0, len(priced), 1000)
    ]
    sender["encode + counter deltas"] = (time.perf_counter() - started) * per
    started = time.perf_counter()
    for batch in batches:
        for call in batch.calls:
            emitter._apply(call)
    sender["send (one function call per 1,000)"] = (time.perf_counter() - started) * per
    emitter._sender_running = False
    emitter.close(timeout_s=1)
    for key in client.scan_iter(match=f"{namespace}*", count=1000):
        client.delete(key)
    client.close()
    return {
        "records": len(items),
        "caller_us": {name: round(ns / 1000, 3) for name, ns in caller.items()},
        "sender_us_per_record": {name: round(us, 3) for name, us in sender.items()},
    }
