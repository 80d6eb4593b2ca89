"""What ``wrap_openai`` adds to a call, beside the bare client's own time.

    python -m benchmarks.integrations [--calls 400] [--json]

Runs the demo's local OpenAI-compatible server (``fleettrace_worker.demo.llm_server``)
on 127.0.0.1, in a process of its own as a provider is, and records into a fresh
namespace of the Redis at ``FLEETTRACE_BENCH_REDIS_URL`` (default
redis://127.0.0.1:6379/0), removed afterwards.

The requests look like an agent's: a cycle of varied ones (50 to 4,000 words of
context, 20 to 800 completion tokens, tools offered to a third of them), so the usage
read back varies from call to call; plain and streamed calls are measured apart.

Three kinds of figures:

- the targets (issue 14): the bare client and the wrapped client make the same
  request back to back, in alternating order, against the local server; the added
  time of a call is the median of the paired differences (wrapped minus bare) of the
  calling thread's CPU time, shown beside the bare client's own p50 per call from the
  same run, as ``wrap_openai overhead ...`` rows with PASS or MISS. The paired
  wall-clock difference is printed too, unjudged: two loopback calls on a shared
  machine differ by more than the target. The wrapped client's records go through a real emitter
  whose sender thread runs beside the caller (and takes the GIL from it now and
  then), which is part of what a wrapped call costs;
- the same comparison with the client's HTTP layer answering in process
  (``httpx2.MockTransport`` with the server's own bodies): the client's CPU path
  without the network's noise, with hand-written hooks (``llm_call`` + ``update``) as a
  third variant;
- the wrapper's own work on real answer objects (bookkeeping, the call captured for
  the emitter, whose sender builds the record, per stream event, the request hashed
  for ``hash_context=True``) and the span processor's cost for a span that is not a
  GenAI span and for one that is.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import httpx2
import openai
import redis
from opentelemetry.sdk.trace import TracerProvider

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.hooks import llm_call
from fleettrace.integrations import FleettraceSpanProcessor, wrap_openai
from fleettrace.integrations._calls import Call, context_hash
from fleettrace.integrations._clients import _after
from fleettrace.integrations.openai import OpenAIAdapter
from fleettrace.keys import Keys
from fleettrace_worker.demo.llm_server import chosen_tools, chunks, completion

REDIS_URL = os.environ.get("FLEETTRACE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Issue 14's targets for the added time of a wrapped call.
TARGET_ADDED_US: Final = 10.0
TARGET_SHARE: Final = 0.05
TOOLS: Final = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("search", "read_file", "run_tests")
]
REQUEST_CYCLE: Final = 64


def agent_requests(count: int, seed: int = 14) -> list[dict[str, Any]]:
    """Requests as an agent makes them: varied context, completion limit and tools."""
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        request: dict[str, Any] = {
            "model": rng.choice(("gpt-4o", "gpt-4o-mini")),
            "messages": [
                {"role": "system", "content": "You are one agent of a fleet."},
                {"role": "user", "content": " ".join(["context"] * rng.randint(50, 4000))},
            ],
            "max_completion_tokens": rng.randint(20, 800),
        }
        if rng.random() < 1 / 3:
            request["tools"] = TOOLS
        made.append(request)
    return made


def _p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _timed(func: Callable[[], Any]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def _timed_both(func: Callable[[], Any]) -> tuple[float, float]:
    """(wall time, CPU time of the calling thread): the second leaves out the wait for
    the server and the time other work on the machine takes the core away."""
    wall, cpu = time.perf_counter(), time.thread_time()
    func()
    return time.perf_counter() - wall, time.thread_time() - cpu


@contextmanager
def server_process() -> Iterator[str]:
    """The local server in a process of its own, as a provider is; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleettrace_worker.demo.llm_server"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(30)


def in_process_client() -> openai.OpenAI:
    """A client whose HTTP layer answers in process (``httpx2.MockTransport``) with the
    local server's bodies: the client's own CPU path, without the network's noise."""

    def answer_for(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        tools = chosen_tools(body, request.content)
        if not body.get("stream"):
            content = json.dumps(completion(body, tools)).encode()
            return httpx2.Response(
                200, content=content, headers={"content-type": "application/json"}
            )
        stream = "".join(chunks(body, tools)).encode()
        return httpx2.Response(200, content=stream, headers={"content-type": "text/event-stream"})

    return openai.OpenAI(
        base_url="http://in-process/v1",
        api_key="sk-bench",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer_for)),
    )


def compare(
    make: Callable[[], openai.OpenAI],
    emitter: Emitter,
    calls: int,
    prefix: str,
    *,
    with_hooks: bool,
) -> dict[str, float]:
    """The bare and the wrapped client (and, with ``with_hooks``, the bare client inside
    hand-written hooks) make the same request in turn; p50s and the median of the
    paired differences, for plain and streamed calls."""
    bare = make()
    wrapped = wrap_openai(make(), emitter=emitter)
    requests = agent_requests(REQUEST_CYCLE)

    def plain(client: openai.OpenAI, request: dict[str, Any]) -> Any:
        return client.chat.completions.create(**request)

    def streamed(client: openai.OpenAI, request: dict[str, Any], **options: Any) -> list[Any]:
        return list(client.chat.completions.create(stream=True, **request, **options))

    def plain_hooks(request: dict[str, Any]) -> None:
        with llm_call("openai", request["model"], emitter=emitter) as call:
            usage = plain(bare, request).usage
            call.update(
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )

    def streamed_hooks(request: dict[str, Any]) -> None:
        with llm_call("openai", request["model"], emitter=emitter, streaming=True) as call:
            usage = streamed(bare, request, stream_options={"include_usage": True})[-1].usage
            call.update(
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )

    variants: dict[str, dict[str, Callable[[dict[str, Any]], Any]]] = {
        "plain": {
            "bare": functools.partial(plain, bare),
            "wrapped": functools.partial(plain, wrapped),
        },
        "stream": {
            "bare": functools.partial(streamed, bare),
            "wrapped": functools.partial(streamed, wrapped),
        },
    }
    if with_hooks:
        variants["plain"]["hooks"] = plain_hooks
        variants["stream"]["hooks"] = streamed_hooks
    figures: dict[str, float] = {}
    for kind, runs in variants.items():
        walls: dict[str, list[float]] = {name: [] for name in runs}
        cpus: dict[str, list[float]] = {name: [] for name in runs}
        for request in requests[:10]:  # warm the connections
            for run in runs.values():
                run(request)
        order = list(runs)
        for i in range(calls):
            request = requests[i % len(requests)]
            # A different order each round: the call after a recording one meets the
            # sender thread at work, and that must not always be the same variant.
            shift = i % len(order)
            for name in order[shift:] + order[:shift]:
                wall, cpu = _timed_both(functools.partial(runs[name], request))
                walls[name].append(wall)
                cpus[name].append(cpu)
        for name in runs:
            figures[f"{prefix}_{kind}_{name}_p50_us"] = _p50_us(walls[name])
            figures[f"{prefix}_{kind}_{name}_cpu_p50_us"] = _p50_us(cpus[name])
        for label, samples in (("", walls), ("_cpu", cpus)):
            paired = [w - b for w, b in zip(samples["wrapped"], samples["bare"], strict=True)]
            figures[f"{prefix}_{kind}_added{label}_us"] = _p50_us(paired)
            if with_hooks:
                hooks = samples["hooks"]
                versus = [w - h for w, h in zip(samples["wrapped"], hooks, strict=True)]
                figures[f"{prefix}_{kind}_wrapped_minus_hooks{label}_us"] = _p50_us(versus)
    return figures


def own_work(url: str, emitter: Emitter, rounds: int) -> dict[str, float]:
    """The wrapper's bookkeeping on real answer objects, without the HTTP call."""
    client = openai.OpenAI(base_url=url, api_key="sk-bench")
    request = agent_requests(1)[0]
    answer = client.chat.completions.create(**request)
    events = list(
        client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **request
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
        for event in events:
            call.first_token()
            adapter.event(event, call)
            adapter.hidden(event, call)

    own = [_timed(bookkeeping) for _ in range(rounds)]
    plain = [_timed(plain_call) for _ in range(rounds)]
    stream = [_timed(per_event) / len(events) for _ in range(rounds)]
    hashed = [_timed(lambda: context_hash(request)) for _ in range(rounds)]
    words = len(request["messages"][1]["content"].split())
    return {
        "own_bookkeeping_p50_us": _p50_us(own),
        "own_with_record_p50_us": _p50_us(plain),
        "own_per_stream_event_p50_us": _p50_us(stream),
        f"own_context_hash_{words}_words_p50_us": _p50_us(hashed),
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


def target_rows(figures: dict[str, float]) -> list[dict[str, Any]]:
    """The issue's targets against the local server, each beside the bare client's own
    p50 from the same run: added p50 <= 10 µs, and <= 5 % of the bare call.

    The added time is the caller's thread's CPU time (paired median, wrapped minus
    bare): the wall-clock difference of two loopback calls varies by more than the
    target on a shared machine (it is printed, not judged). The bare call is its wall
    time, what the call costs the agent."""
    rows = []
    for kind in ("plain", "stream"):
        added = figures[f"loopback_{kind}_added_cpu_us"]
        bare = figures[f"loopback_{kind}_bare_p50_us"]
        rows += [
            {
                "figure": f"wrap_openai overhead p50, {kind} call (added µs)",
                "value": round(added, 1),
                "comparator": f"bare client p50 {bare:,.0f} µs",
                "target": f"<= {TARGET_ADDED_US:g} µs",
                "status": "PASS" if added <= TARGET_ADDED_US else "MISS",
            },
            {
                "figure": f"wrap_openai overhead share, {kind} call (% of the bare call)",
                "value": round(100 * added / bare, 2),
                "comparator": f"bare client p50 {bare:,.0f} µs",
                "target": f"<= {100 * TARGET_SHARE:g} %",
                "status": "PASS" if added <= TARGET_SHARE * bare else "MISS",
            },
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wrap_openai overhead against a local server")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    keys = Keys(f"bench-{uuid.uuid4().hex[:12]}")
    emitter = Emitter(EmitterSettings(redis_url=REDIS_URL, namespace=keys.namespace))
    machine = {"cpus": os.cpu_count(), "load_average_start": round(os.getloadavg()[0], 2)}
    try:
        with server_process() as url:
            local = functools.partial(
                openai.OpenAI, base_url=url, api_key="sk-bench", max_retries=0
            )
            figures = compare(local, emitter, args.calls, "loopback", with_hooks=False)
            figures |= compare(
                in_process_client, emitter, args.calls * 2, "in_process", with_hooks=True
            )
            figures |= own_work(url, emitter, args.calls * 5)
        figures |= span_processor(emitter, args.calls * 5)
        emitter.flush(30)
    finally:
        emitter.close()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
            client.delete(key)
        client.close()
    machine["load_average_end"] = round(os.getloadavg()[0], 2)
    rows = target_rows(figures)
    if args.json:
        rounded = {name: round(value, 2) for name, value in figures.items()}
        print(json.dumps({"machine": machine, "figures": rounded, "targets": rows}))
        return 0
    print(
        f"machine: {machine['cpus']} cpus, load average {machine['load_average_start']} "
        f"at start, {machine['load_average_end']} at end"
    )
    for name, value in figures.items():
        print(f"{name:40} {value:10.1f}")
    for row in rows:
        print(
            f"{row['figure']:58} {row['value']:>8}  ({row['comparator']}; "
            f"target {row['target']})  {row['status']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
