"""A local OpenAI-compatible server for the demo's agents (and the overhead benchmark).

The demo's agents call it through the real ``openai`` client wrapped by
``fleettrace.integrations.wrap_openai``, the way a user's agent calls a provider, so
the demo shows the path users take. It answers ``POST /v1/chat/completions`` only,
as a provider would in shape:

- usage that follows the request: ``prompt_tokens`` counts the words of the messages
  (plus 4 per message, as chat formats add), a prompt of 1,024 tokens or more has its
  first half (in steps of 128) reported as ``cached_tokens``, and the completion is as
  long as ``max_completion_tokens`` (or ``max_tokens``) asks, else 16 tokens;
- plain JSON answers, or server-sent events (the content in up to
  :data:`STREAM_CHUNKS` chunks, and the usage-only chunk when the request asked for
  ``stream_options.include_usage``);
- tool calls for a share of the requests that offer tools (which, and how many,
  follows from the request's bytes, so a request always gets the same answer);
- faults the caller asks for, for a demo that must show retries and errors on every
  run: a request with ``X-Demo-Failures: N`` is answered ``X-Demo-Status`` (default
  429, with ``retry-after-ms``) while the client's own attempt number
  (``x-stainless-retry-count``) is below N. N above the client's retries makes the
  call fail after them.

It is a ``ThreadingHTTPServer`` on 127.0.0.1 and a free port, in a daemon thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Self

FAILURES_HEADER: Final = "X-Demo-Failures"
STATUS_HEADER: Final = "X-Demo-Status"
#: The attempt number the ``openai`` client sends with every attempt (0 first).
ATTEMPT_HEADER: Final = "x-stainless-retry-count"
#: How long a 429 asks the client to wait before its retry.
RETRY_AFTER_MS: Final = 5
DEFAULT_COMPLETION_TOKENS: Final = 16
TOKENS_PER_MESSAGE: Final = 4
#: OpenAI caches prompt prefixes of at least this many tokens, in steps of CACHE_STEP.
CACHE_MIN_TOKENS: Final = 1024
CACHE_STEP: Final = 128
STREAM_CHUNKS: Final = 8
CHAT_PATH: Final = "/v1/chat/completions"


class QuietServer(ThreadingHTTPServer):
    """A client closing its keep-alive connection is not an error worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def send_json(
    handler: BaseHTTPRequestHandler,
    payload: object,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    """One JSON answer with its length."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(data)


def send_sse(handler: BaseHTTPRequestHandler, events: Iterator[str]) -> None:
    """A server-sent-event stream, chunked, each event flushed as it is made."""
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.send_header("transfer-encoding", "chunked")
    handler.end_headers()
    for event in events:
        data = event.encode()
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        handler.wfile.flush()
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


def sse_data(payload: object) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def prompt_tokens(body: dict[str, Any]) -> int:
    """The request's input in (word) tokens: every message's text, plus its framing."""
    total = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts
            content = " ".join(str(part.get("text", "")) for part in content)
        total += TOKENS_PER_MESSAGE + len(str(content or "").split())
    return total


def usage(body: dict[str, Any]) -> dict[str, Any]:
    """The usage of an answer to ``body``, in the chat completions layout."""
    prompt = prompt_tokens(body)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    completion = limit if type(limit) is int and limit > 0 else DEFAULT_COMPLETION_TOKENS
    cached = (prompt // 2) // CACHE_STEP * CACHE_STEP if prompt >= CACHE_MIN_TOKENS else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def chosen_tools(body: dict[str, Any], raw: bytes) -> list[str]:
    """Zero, one or two of the offered tools, the same for the same request."""
    offered = [
        str((tool.get("function") or {}).get("name"))
        for tool in body.get("tools") or ()
        if isinstance(tool, dict)
    ]
    if not offered:
        return []
    dice = random.Random(hashlib.blake2b(raw, digest_size=8).digest())
    return dice.sample(offered, min(dice.randint(0, 2), len(offered)))


def tool_call(index: int, name: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": name, "arguments": "{}"},
    }


def completion(body: dict[str, Any], tools: list[str]) -> dict[str, Any]:
    """A whole chat completion."""
    answer = usage(body)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": " ".join(["lorem"] * answer["completion_tokens"]),
    }
    if tools:
        message = {"role": "assistant", "content": None}
        message["tool_calls"] = [tool_call(i, name) for i, name in enumerate(tools)]
    return {
        "id": "chatcmpl-demo",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "unknown",
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if tools else "stop"}
        ],
        "usage": answer,
    }


def chunks(body: dict[str, Any], tools: list[str]) -> Iterator[str]:
    """A streamed chat completion, usage-only chunk last when the request asks for it."""
    answer = usage(body)
    model = body.get("model") or "unknown"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        payload = {
            "id": "chatcmpl-demo",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            **extra,
        }
        return sse_data(payload)

    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
    words = answer["completion_tokens"]
    parts = min(STREAM_CHUNKS, words)
    for part in range(parts):
        count = words // parts + (part < words % parts)
        yield chunk([{"index": 0, "delta": {"content": "lorem " * count}}])
    for i, name in enumerate(tools):
        yield chunk([{"index": 0, "delta": {"tool_calls": [tool_call(i, name)]}}])
    finish = "tool_calls" if tools else "stop"
    yield chunk([{"index": 0, "delta": {}, "finish_reason": finish}])
    if (body.get("stream_options") or {}).get("include_usage"):
        yield chunk([], usage=answer)
    yield "data: [DONE]\n\n"


class LocalServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 and a free port, in a daemon thread, whose
    POSTs go to :meth:`answer` and whose GETs are 404s: the base of the demo's server and
    of the test suite's provider servers, so the socket handling is written once."""

    thread_name = "local-http-server"

    def __init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes: without this, Nagle's
            # algorithm and delayed ACKs add 40 ms to some answers.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                send_json(self, {"error": {"message": "not found"}}, 404)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                # A caller that stops reading closes the connection under us.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    server.answer(self, raw)

        self._httpd = QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=self.thread_name, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        """Answer one POST whose body is ``raw``."""
        raise NotImplementedError


class LLMServer(LocalServer):
    """The local OpenAI-compatible server; ``with LLMServer() as server: server.url``.

    ``delay_s`` is a (low, high) range each answer waits before its first byte, so
    latencies and times to first token look like a provider's (scaled down).
    """

    thread_name = "demo-llm-server"

    def __init__(self, delay_s: tuple[float, float] = (0.0, 0.0)) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        self._delay = delay_s
        self._dice = random.Random()
        super().__init__()

    @property
    def url(self) -> str:
        """The base URL an ``openai`` client takes."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _wait(self) -> None:
        low, high = self._delay
        if high > 0:
            with self._lock:
                delay = self._dice.uniform(low, high)
            time.sleep(delay)

    def answer(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        with self._lock:
            self.requests += 1
        if handler.path != CHAT_PATH:
            send_json(handler, {"error": {"message": f"no route {handler.path}"}}, 404)
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as error:
            message = {"error": {"message": f"bad JSON: {error}", "type": "invalid_request_error"}}
            send_json(handler, message, 400)
            return
        self._wait()
        fault = _fault(handler)
        if fault is not None:
            status, headers = fault
            message = {"error": {"message": f"simulated {status}", "type": "demo_fault"}}
            send_json(handler, message, status, headers)
            return
        tools = chosen_tools(body, raw)
        if body.get("stream"):
            send_sse(handler, chunks(body, tools))
        else:
            send_json(handler, completion(body, tools))


def _fault(handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, str]] | None:
    """The status (and headers) to fail this attempt with, if the request asks for it."""
    try:
        failures = int(handler.headers.get(FAILURES_HEADER, "0"))
        attempt = int(handler.headers.get(ATTEMPT_HEADER, "0"))
        status = int(handler.headers.get(STATUS_HEADER, "429"))
    except ValueError:
        return None
    if attempt >= failures or not 400 <= status <= 599:
        return None
    headers = {"retry-after-ms": str(RETRY_AFTER_MS)} if status == 429 else {}
    return status, headers


def main() -> None:
    """``python -m fleettrace_worker.demo.llm_server``: serve in a process of its own
    (as a provider is) until SIGTERM or SIGINT; print the base URL first."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LLMServer() as server:
        print(server.url, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
