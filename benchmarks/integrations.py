"""What ``wrap_openai`` adds to a call, beside the bare client's own time.

    python -m benchmarks.integrations [--calls 400] [--json]

Runs the local OpenAI-compatible server of the tests (tests/llm_servers.py) on
127.0.0.1 and records into a fresh namespace of the Redis at
``FLEETTRACE_BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/0), removed afterwards.

Two kinds of figures:

- end to end: a bare and a wrapped client make the same calls, alternating, plain
  and streamed; p50 per call of each and the difference. A loopback HTTP round trip
  costs hundreds of microseconds and varies by more than the wrapper adds, so the
  difference is noisy;
- the wrapper's own work, timed without the network, on real answer objects: its
  bookkeeping (a ``Call`` with the scopes, reading model, usage and tool calls), the
  same with the record built and handed to the emitter (the cost a hand-written
  ``actor.llm`` hook pays too), the work per stream event, and the span processor's
  cost for a span that is not a GenAI span and for one that is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import openai
import redis
from opentelemetry.sdk.trace import TracerProvider
from tests.llm_servers import LLMServer

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.integrations import FleettraceSpanProcessor, wrap_openai
from fleettrace.integrations._calls import Call
from fleettrace.integrations._clients import _after
from fleettrace.integrations.openai import OpenAIAdapter
from fleettrace.keys import Keys

REDIS_URL = os.environ.get("FLEETTRACE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MESSAGES = [{"role": "user", "content": "hi"}]


def _p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _timed(func: Callable[[], Any]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def end_to_end(server: LLMServer, emitter: Emitter, calls: int) -> dict[str, float]:
    bare = openai.OpenAI(base_url=server.openai_url, api_key="sk-bench", max_retries=0)
    wrapped = wrap_openai(
        openai.OpenAI(base_url=server.openai_url, api_key="sk-bench", max_retries=0),
        emitter=emitter,
    )

    def plain(client: openai.OpenAI) -> Callable[[], Any]:
        return lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    def streamed(client: openai.OpenAI) -> Callable[[], Any]:
        return lambda: list(
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        )

    figures: dict[str, float] = {}
    for kind, make in (("plain", plain), ("stream", streamed)):
        times: dict[str, list[float]] = {"bare": [], "wrapped": []}
        for _ in range(10):  # warm both connections
            make(bare)()
            make(wrapped)()
        for _ in range(calls):
            times["bare"].append(_timed(make(bare)))
            times["wrapped"].append(_timed(make(wrapped)))
        figures[f"{kind}_bare_p50_us"] = _p50_us(times["bare"])
        figures[f"{kind}_wrapped_p50_us"] = _p50_us(times["wrapped"])
        figures[f"{kind}_difference_us"] = (
            figures[f"{kind}_wrapped_p50_us"] - figures[f"{kind}_bare_p50_us"]
        )
    return figures


def own_work(server: LLMServer, emitter: Emitter, rounds: int) -> dict[str, float]:
    """The wrapper's bookkeeping on real answer objects, without the HTTP call."""
    client = openai.OpenAI(base_url=server.openai_url, api_key="sk-bench")
    answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    adapter = OpenAIAdapter()

    def bookkeeping() -> Call:
        call = Call("openai", "gpt-4o", emitter)
        adapter.read(answer, call)
        return call

    def plain_call() -> None:
        _after(answer, Call("openai", "gpt-4o", emitter), adapter)

    def per_event() -> None:
        call = Call("openai", "gpt-4o", emitter)
        for chunk in chunks:
            call.first_token()
            adapter.event(chunk, call)
            adapter.hidden(chunk, call)

    own = [_timed(bookkeeping) for _ in range(rounds)]
    plain = [_timed(plain_call) for _ in range(rounds)]
    stream = [_timed(per_event) / len(chunks) for _ in range(rounds)]
    return {
        "own_bookkeeping_p50_us": _p50_us(own),
        "own_with_record_p50_us": _p50_us(plain),
        "own_per_stream_event_p50_us": _p50_us(stream),
    }


def span_processor(emitter: Emitter, rounds: int) -> dict[str, float]:
    provider = TracerProvider()
    tracer = provider.get_tracer("bench")
    processor = FleettraceSpanProcessor(emitter=emitter)
    with tracer.start_as_current_span("GET /", attributes={"http.method": "GET"}) as other:
        pass
    genai = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 100,
    }
    with tracer.start_as_current_span("chat", attributes=genai) as chat:
        pass
    ignored = [_timed(lambda: processor.on_end(other)) for _ in range(rounds)]  # type: ignore[arg-type]
    recorded = [_timed(lambda: processor.on_end(chat)) for _ in range(rounds)]  # type: ignore[arg-type]
    provider.shutdown()
    return {"otel_other_span_p50_us": _p50_us(ignored), "otel_genai_span_p50_us": _p50_us(recorded)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wrap_openai overhead against a local server")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    keys = Keys(f"bench-{uuid.uuid4().hex[:12]}")
    emitter = Emitter(EmitterSettings(redis_url=REDIS_URL, namespace=keys.namespace))
    try:
        with LLMServer() as server:
            figures = end_to_end(server, emitter, args.calls)
            figures |= own_work(server, emitter, args.calls * 5)
        figures |= span_processor(emitter, args.calls * 5)
        emitter.flush(30)
    finally:
        emitter.close()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
            client.delete(key)
        client.close()
    if args.json:
        print(json.dumps({name: round(value, 2) for name, value in figures.items()}))
    else:
        for name, value in figures.items():
            print(f"{name:32} {value:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
