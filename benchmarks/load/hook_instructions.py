"""What one hook costs in instructions, which a shared machine's load does not move.

``python -m benchmarks.load.hook_instructions MODE N`` runs ``N`` hooks of one kind
(``llm``, ``tool``, ``actor`` or ``fail``) inside a plan with tags and metadata, a
decision and an actor, as :class:`benchmarks.load.records.HookWorkload` makes them
(an LLM call: ``actor.llm(provider, model, streaming=..., retry_count=0)``,
``first_token()`` when it streams, ``update(**usage)``; ``fail``: an LLM call whose
block raises). The emitter's sender thread is not started (a benchmark-only switch)
and the buffer is emptied now and then, so only the caller's thread is counted; the
clock the ids read is held in one millisecond, so that the count does not depend on
how fast the hooks run (under valgrind, each would start a new millisecond). With a
third argument it prints the wall time per hook instead.

Instructions per hook are the difference of two runs under callgrind, ``N`` hooks and
none, divided by ``N`` (one run first so that every module is compiled already)::

    export PYTHONHASHSEED=0
    count() { valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m benchmarks.load.hook_instructions llm "$1" 2>&1 \\
        | grep -o 'Collected : [0-9]*' | grep -o '[0-9]*'; }
    count 0 >/dev/null; none=$(count 0); some=$(count 5000)
    echo $(( (some - none) / 5000 ))
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import time
from typing import Any

from benchmarks.load.records import (
    ACTORS,
    PLAN_METADATA,
    PLAN_TAGS,
    TOOLS,
    HookWorkload,
    RateLimited,
)

MODES = ("llm", "tool", "actor", "fail")


def run(calls: list[tuple[str, str, dict[str, int], bool, bool]], mode: str, emitter: Any) -> None:
    import fleettrace

    plan, decision, actor, tool = (
        fleettrace.plan,
        fleettrace.decision,
        fleettrace.actor,
        fleettrace.tool,
    )
    with plan(tags=PLAN_TAGS, metadata=PLAN_METADATA), decision(), actor(ACTORS[0]) as agent:
        for turn, (provider, model, usage, streaming, _) in enumerate(calls):
            if mode == "llm":
                with agent.llm(provider, model, streaming=streaming, retry_count=0) as call:
                    if streaming:
                        call.first_token()
                    call.update(**usage)
            elif mode == "tool":
                with tool(TOOLS[turn % len(TOOLS)]):
                    pass
            elif mode == "actor":
                with actor(ACTORS[turn % len(ACTORS)]):
                    pass
            else:
                try:
                    with agent.llm(provider, model, streaming=streaming):
                        raise RateLimited("RateLimitError: slow down")
                except RateLimited:
                    pass
            if len(emitter._buffer) > 50_000:
                emitter._buffer.clear()


def main(argv: list[str]) -> None:
    mode, count = argv[0], int(argv[1])
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {', '.join(MODES)}")
    import fleettrace.emitter
    from fleettrace.emitter import Emitter, EmitterSettings

    emitter = Emitter(
        EmitterSettings(namespace="bench-instructions", max_buffer_records=10**7, producer="bench")
    )
    emitter._sender_running = True  # benchmark only: no sender thread
    fleettrace.emitter._default = emitter
    calls = HookWorkload(20_000).calls[:count]
    # The ids' clock held in one millisecond (a C callable, as time.time_ns is).
    fixed = itertools.repeat(time.time_ns()).__next__
    time.time_ns = fixed
    import fleettrace.llm_span

    if hasattr(fleettrace.llm_span, "time_ns"):
        fleettrace.llm_span.time_ns = fixed
    run(HookWorkload(2_000, seed=1).calls, mode, emitter)  # warm: specialised, shapes known
    emitter._buffer.clear()
    gc.collect()
    gc.disable()
    started = time.perf_counter()
    run(calls, mode, emitter)
    if len(argv) > 2:
        print(f"{mode}: {(time.perf_counter() - started) / max(count, 1) * 1e6:.3f} µs per hook")
    sys.stdout.flush()
    os._exit(0)  # no exit drain: what is buffered is not counted


if __name__ == "__main__":
    main(sys.argv[1:])
