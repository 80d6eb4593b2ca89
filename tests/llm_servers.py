"""Local LLM servers for the integration tests, and the pipeline that stores what the
integrations record.

``LLMServer`` is a ``ThreadingHTTPServer`` on 127.0.0.1 that speaks enough of
OpenAI's (chat completions, Responses) and Anthropic's (messages) wire formats for
their real clients: JSON answers, server-sent-event streams with the usage chunk or
events, tool calls when the request offers tools, and faults queued by the test
(429 with ``retry-after-ms`` so the client retries, 500, 400, a malformed chunk).

``Pipeline`` is the path a record takes after the hook: a real emitter into a fresh
Redis namespace, the worker's persist loop into a fresh PostgreSQL database, and the
rows read back from ``llm_traces``.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import psycopg

from fleettrace.emitter import Emitter
from fleettrace.keys import Keys
from fleettrace_worker.demo.llm_server import LocalServer, send_json, send_sse, tool_call
from fleettrace_worker.keys import PERSIST_GROUP
from tests.emitting import make_emitter
from tests.worker_helpers import migrated

#: The model a response names for the model a request asked for (as OpenAI answers a
#: request for an alias with the dated snapshot it served).
SERVED = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "claude-3-5-sonnet-latest": "claude-3-5-sonnet-20241022",
}

# The usage every answer reports: whole input, cached part, whole output, reasoning part.
PROMPT_TOKENS = 1200
CACHED_TOKENS = 1000
COMPLETION_TOKENS = 300
REASONING_TOKENS = 40
# Anthropic reports its input apart: uncached input, cache reads, cache writes.
ANTHROPIC_INPUT = 200
ANTHROPIC_CACHE_READ = 900
ANTHROPIC_CACHE_WRITE = 100
ANTHROPIC_OUTPUT = 150

WORDS = ("Hello", " from", " the", " local", " server")


@dataclass
class Fault:
    """One queued answer that is not the normal one."""

    status: int = 200
    malformed: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    #: Only a request for this model gets the fault (any request when None).
    model: str | None = None


class LLMServer(LocalServer):
    """An OpenAI- and Anthropic-compatible server on a free loopback port."""

    thread_name = "test-llm-server"

    def __init__(self) -> None:
        self.faults: deque[Fault] = deque()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        super().__init__()

    def answer(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        body = json.loads(raw or b"{}")
        with self._lock:
            self.requests.append((handler.path, body))
            fault = self._take_fault(body.get("model"))
        self._answer(handler, body, fault)

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, status: int, times: int = 1, model: str | None = None, **headers: str) -> None:
        for _ in range(times):
            self.faults.append(Fault(status=status, headers=headers, model=model))

    def _take_fault(self, model: object) -> Fault:
        """The first queued fault for this request's model, or the normal answer."""
        for fault in self.faults:
            if fault.model is None or fault.model == model:
                self.faults.remove(fault)
                return fault
        return Fault()

    def malformed_next(self) -> None:
        self.faults.append(Fault(malformed=True))

    # -- answers ---------------------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], fault: Fault) -> None:
        if fault.status != 200:
            payload = {"error": {"message": f"fault {fault.status}", "type": "server_error"}}
            if handler.path.endswith("/messages"):
                payload = {"type": "error", "error": {"type": "api_error", "message": "fault"}}
            send_json(handler, payload, fault.status, fault.headers)
            return
        model = SERVED.get(body.get("model", ""), body.get("model", "unknown"))
        tools = [self._tool_name(t) for t in body.get("tools") or []]
        if handler.path.endswith("/chat/completions"):
            if body.get("stream"):
                usage = (body.get("stream_options") or {}).get("include_usage", False)
                self._sse(handler, _chat_chunks(model, tools, usage, fault.malformed))
            else:
                send_json(handler, _chat_completion(model, tools))
        elif handler.path.endswith("/responses"):
            if body.get("stream"):
                self._sse(handler, _response_events(model, tools, fault.malformed))
            else:
                send_json(handler, _response(model, tools))
        elif handler.path.endswith("/messages"):
            if body.get("stream"):
                self._sse(handler, _message_events(model, tools, fault.malformed))
            else:
                send_json(handler, _message(model, tools))
        else:
            send_json(handler, {"error": {"message": "not found"}}, 404)

    @staticmethod
    def _tool_name(tool: dict[str, Any]) -> str:
        return str(tool.get("name") or tool.get("function", {}).get("name"))

    _sse = staticmethod(send_sse)


def _data(payload: object, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n"


def _openai_usage() -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
        "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
    }


def _chat_completion(model: str, tools: list[str]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(WORDS)}
    if tools:
        message = {"role": "assistant", "content": None}
        message["tool_calls"] = [tool_call(i, t) for i, t in enumerate(tools)]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tools else "stop",
            }
        ],
        "usage": _openai_usage(),
    }


def _chunk(model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": choices,
        **extra,
    }


def _chat_chunks(model: str, tools: list[str], usage: bool, malformed: bool) -> Iterator[str]:
    yield _data(_chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
    for i, word in enumerate(WORDS):
        if malformed and i == 2:
            yield "data: {not json\n\n"
        yield _data(_chunk(model, [{"index": 0, "delta": {"content": word}}]))
    for i, name in enumerate(tools):
        delta = {"tool_calls": [tool_call(i, name)]}
        yield _data(_chunk(model, [{"index": 0, "delta": delta}]))
    finish = "tool_calls" if tools else "stop"
    yield _data(_chunk(model, [{"index": 0, "delta": {}, "finish_reason": finish}]))
    if usage:
        yield _data(_chunk(model, [], usage=_openai_usage()))
    yield "data: [DONE]\n\n"


def _responses_usage() -> dict[str, Any]:
    return {
        "input_tokens": PROMPT_TOKENS,
        "output_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
        "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
    }


def _response(model: str, tools: list[str], status: str = "completed") -> dict[str, Any]:
    output: list[dict[str, Any]] = [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "".join(WORDS), "annotations": []}],
        }
    ]
    output += [
        {
            "type": "function_call",
            "id": f"fc_{i}",
            "call_id": f"call_{i}",
            "name": name,
            "arguments": "{}",
            "status": "completed",
        }
        for i, name in enumerate(tools)
    ]
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_700_000_000,
        "model": model,
        "status": status,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": _responses_usage() if status == "completed" else None,
    }


def _response_events(model: str, tools: list[str], malformed: bool) -> Iterator[str]:
    created = {**_response(model, [], status="in_progress"), "output": []}
    yield _data({"type": "response.created", "sequence_number": 0, "response": created})
    item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress"}
    added = {"type": "response.output_item.added", "sequence_number": 0, "output_index": 0}
    yield _data({**added, "item": {**item, "content": []}}, added["type"])
    part = {"type": "output_text", "text": "", "annotations": []}
    yield _data(
        {
            "type": "response.content_part.added",
            "sequence_number": 0,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": part,
        },
        "response.content_part.added",
    )
    for i, word in enumerate(WORDS):
        if malformed and i == 2:
            yield "event: response.output_text.delta\ndata: {not json\n\n"
        delta = {
            "type": "response.output_text.delta",
            "sequence_number": i + 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": word,
            "logprobs": [],
        }
        yield _data(delta, "response.output_text.delta")
    done = {
        "type": "response.completed",
        "sequence_number": 99,
        "response": _response(model, tools),
    }
    yield _data(done, "response.completed")


def _anthropic_usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": ANTHROPIC_INPUT,
        "cache_read_input_tokens": ANTHROPIC_CACHE_READ,
        "cache_creation_input_tokens": ANTHROPIC_CACHE_WRITE,
        "output_tokens": output_tokens,
    }


def _message(model: str, tools: list[str]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "".join(WORDS)}]
    content += [
        {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}}
        for i, name in enumerate(tools)
    ]
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if tools else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(ANTHROPIC_OUTPUT),
    }


def _message_events(model: str, tools: list[str], malformed: bool) -> Iterator[str]:
    start = {**_message(model, []), "content": [], "stop_reason": None}
    start["usage"] = _anthropic_usage(1)
    yield _data({"type": "message_start", "message": start}, "message_start")
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    yield _data(block, "content_block_start")
    for i, word in enumerate(WORDS):
        if malformed and i == 2:
            yield "event: content_block_delta\ndata: {not json\n\n"
        delta = {"type": "text_delta", "text": word}
        yield _data(
            {"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta"
        )
    yield _data({"type": "content_block_stop", "index": 0}, "content_block_stop")
    for i, name in enumerate(tools, start=1):
        tool_block = {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}}
        start_event = {"type": "content_block_start", "index": i, "content_block": tool_block}
        yield _data(start_event, "content_block_start")
        yield _data({"type": "content_block_stop", "index": i}, "content_block_stop")
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use" if tools else "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": ANTHROPIC_OUTPUT},
    }
    yield _data(delta, "message_delta")
    yield _data({"type": "message_stop"}, "message_stop")


# -- the pipeline behind the hooks ----------------------------------------------------


class Pipeline:
    """A default emitter into a fresh namespace, and the persist loop into a fresh,
    migrated database: what a test's calls recorded, read back as rows."""

    def __init__(self, redis_url: str, keys: Keys, database_url: str) -> None:
        self.keys = keys
        self.database_url = migrated(database_url)
        self.emitter: Emitter = make_emitter(redis_url, keys)
        self._redis_url = redis_url

    def rows(self) -> list[dict[str, Any]]:
        """Flush the emitter, run the persist loop until the stream is drained, and
        return every ``llm_traces`` row, oldest first."""
        import redis as redis_lib

        from fleettrace_worker.store.database import create_pool
        from fleettrace_worker.store.persist import PersistLoop
        from fleettrace_worker.store.repository import LLMTraceRepository
        from fleettrace_worker.stream.consumer import Consumer
        from fleettrace_worker.stream.loop import LoopSettings

        assert self.emitter.flush(30), f"emitter could not deliver: {self.emitter.stats}"
        client = redis_lib.Redis.from_url(self._redis_url)
        pool = create_pool(self.database_url, min_size=1, max_size=2)
        try:
            consumer = Consumer(client, self.keys, PERSIST_GROUP, "integrations")
            settings = LoopSettings(burst=True, retry_initial_s=0.01, retry_max_s=0.05)
            loop = PersistLoop(consumer, LLMTraceRepository(pool), settings, pool=pool)
            loop.run(threading.Event())
            assert loop.stats.dead_letters == 0
        finally:
            pool.close()
            client.close()
        with psycopg.connect(self.database_url) as conn:
            cursor = conn.execute("SELECT * FROM llm_traces ORDER BY started_at, trace_id")
            names = [column.name for column in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        self.emitter.close()


def main() -> None:
    """``python -m tests.llm_servers``: serve until SIGTERM; print the OpenAI base URL."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LLMServer() as server:
        print(server.openai_url, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
