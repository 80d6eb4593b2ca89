"""What ``wrap_openai`` adds to a call, beside the bare client's own time.

    python -m benchmarks.integrations [--calls 400] [--json]

Runs the local OpenAI-compatible server of the tests (tests/llm_servers.py) on
127.0.0.1 and records into a fresh namespace of the Redis at
``FLEETTRACE_BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/0), removed afterwards.

Two kinds of figures:

- end to end: the bare client, the bare client inside hand-written hooks
  (``llm_call`` + ``update``), and the wrapped client make the same calls in turn,
  plain and streamed; p50 per call of each and the differences. Both recording
  variants share the emitter's sender thread, which runs beside the caller (and takes
  the GIL from it now and then), so "wrapped minus hooks" is the wrapper's own share.
  A loopback round trip varies by more than that, so these differences are noisy;
- the wrapper's own work, timed without the network, on real answer objects: its
  bookkeeping (a ``Call`` with the scopes, reading model, usage and tool calls), the
  same with the record built and handed to the emitter (the cost a hand-written
  ``actor.llm`` hook pays too), the work per stream event, and the span processor's
  cost for a span that is not a GenAI span and for one that is.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import redis
from opentelemetry.sdk.trace import TracerProvider
from tests.llm_servers import LLMServer, _chat_chunks, _chat_completion

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.hooks import llm_call
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


def in_process_client() -> openai.OpenAI:
    """A client whose HTTP layer answers in process (``httpx2.MockTransport``) with the
    local server's bodies: the client's own CPU path, without the network's noise."""
    answer = json.dumps(_chat_completion("gpt-4o-2024-08-06", [])).encode()
    stream = "".join(_chat_chunks("gpt-4o-2024-08-06", [], True, False)).encode()
    bare_stream = "".join(_chat_chunks("gpt-4o-2024-08-06", [], False, False)).encode()

    def answer_for(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        if not body.get("stream"):
            return httpx2.Response(
                200, content=answer, headers={"content-type": "application/json"}
            )
        usage = (body.get("stream_options") or {}).get("include_usage")
        content = stream if usage else bare_stream
        return httpx2.Response(200, content=content, headers={"content-type": "text/event-stream"})

    transport = httpx2.MockTransport(answer_for)
    return openai.OpenAI(
        base_url="http://in-process/v1",
        api_key="sk-bench",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


def compare(
    make: Callable[[], openai.OpenAI], emitter: Emitter, calls: int, prefix: str
) -> dict[str, float]:
    """Bare client, the same client with hand-written hooks (``llm_call`` + ``update``,
    the way the README showed before the integrations), and the wrapped client."""
    bare = make()
    wrapped = wrap_openai(make(), emitter=emitter)

    def plain(client: openai.OpenAI) -> Any:
        return client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    def plain_hooks() -> None:
        with llm_call("openai", "gpt-4o", emitter=emitter) as call:
            usage = plain(bare).usage
            call.update(
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )

    def streamed(client: openai.OpenAI, **options: Any) -> list[Any]:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, **options
        )
        return list(stream)

    def streamed_hooks() -> None:
        with llm_call("openai", "gpt-4o", emitter=emitter, streaming=True) as call:
            usage = streamed(bare, stream_options={"include_usage": True})[-1].usage
            call.update(
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )

    variants: dict[str, dict[str, Callable[[], Any]]] = {
        "plain": {
            "bare": lambda: plain(bare),
            "hooks": plain_hooks,
            "wrapped": lambda: plain(wrapped),
        },
        "stream": {
            "bare": lambda: streamed(bare),
            "hooks": streamed_hooks,
            "wrapped": lambda: streamed(wrapped),
        },
    }
    figures: dict[str, float] = {}
    for kind, runs in variants.items():
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(10):  # warm the connections
            for run in runs.values():
                run()
        order = list(runs)
        for i in range(calls):
            # A different order each round: the call after a recording one meets the
            # sender thread at work, and that must not always be the same variant.
            for name in order[i % 3 :] + order[: i % 3]:
                times[name].append(_timed(runs[name]))
        p50 = {name: _p50_us(times[name]) for name in runs}
        for name in runs:
            figures[f"{prefix}_{kind}_{name}_p50_us"] = p50[name]
        figures[f"{prefix}_{kind}_wrapped_minus_bare_us"] = p50["wrapped"] - p50["bare"]
        figures[f"{prefix}_{kind}_wrapped_minus_hooks_us"] = p50["wrapped"] - p50["hooks"]
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
    # A span is recorded once (a second processor skips it), so each timing gets its own.
    chats = []
    for _ in range(rounds):
        with tracer.start_as_current_span("chat", attributes=genai) as chat:
            chats.append(chat)
    ignored = [_timed(lambda: processor.on_end(other)) for _ in range(rounds)]  # type: ignore[arg-type]
    recorded = [_timed(lambda span=span: processor.on_end(span)) for span in chats]  # type: ignore[misc]
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
            local = functools.partial(
                openai.OpenAI, base_url=server.openai_url, api_key="sk-bench", max_retries=0
            )
            figures = compare(local, emitter, args.calls, "loopback")
            figures |= compare(in_process_client, emitter, args.calls * 5, "in_process")
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
