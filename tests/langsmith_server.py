"""A LangSmith-compatible HTTP server on 127.0.0.1 that tests run in a thread.

It answers the endpoints the ``langsmith`` client uses for runs (``GET /info``,
``POST /runs``, ``POST /runs/batch``, ``POST /runs/multipart``,
``PATCH /runs/{id}``), keeps every run it accepted by id, answers 409 to a run id
it already holds (as LangSmith does), checks the ``x-api-key`` header, and can be
told to misbehave: answer 503 or 429 (with or without Retry-After), sleep past the
client's timeout, or drop the connection, for a while or for a number of requests.

Below it, what the forwarding tests share: the key the server takes, their fixture
``server`` (import ``langsmith_server``), their settings and their burst loop.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace_worker.forward.langsmith.group import ForwardLoop, loop_settings
from fleettrace_worker.forward.langsmith.runs import plan_root_id
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.keys import LANGSMITH_GROUP
from fleettrace_worker.stream.consumer import Consumer


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-request (the SIGKILL tests) is expected, not news."""


@dataclass
class Fault:
    """One misbehaviour: ``status`` (with ``retry_after``), ``sleep`` or ``close``.

    It applies to the next ``count`` requests, or until ``duration_s`` has passed
    since it became the current fault, whichever is given.
    """

    kind: str
    status: int = 503
    retry_after: str | None = None
    sleep_s: float = 0.0
    duration_s: float | None = None
    count: int | None = None
    started_at: float | None = None
    used: int = 0


@dataclass
class Recorded:
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    accepted: Counter[str] = field(default_factory=Counter)
    conflicts: Counter[str] = field(default_factory=Counter)
    answers: Counter[int] = field(default_factory=Counter)
    patches: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    api_keys: set[str | None] = field(default_factory=set)


class LangSmithServer:
    def __init__(self, *, api_key: str | None = "test-key", delay_s: float = 0.0) -> None:
        self.api_key = api_key
        #: Every answer about runs waits this long, as a far-away server would.
        self.delay_s = delay_s
        self.recorded = Recorded()
        self.faults: list[Fault] = []
        #: When the last queued fault was spent (monotonic), to time a catch-up.
        self.healthy_since: float | None = None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

            def do_PATCH(self) -> None:
                server._handle(self, "PATCH")

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LangSmithServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self) -> LangSmithServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- fault schedule -------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each starts when the previous one is spent."""
        with self.lock:
            self.faults.extend(faults)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _current_fault(self) -> Fault | None:
        with self.lock:
            now = time.monotonic()
            while self.faults:
                fault = self.faults[0]
                if fault.started_at is None:
                    fault.started_at = now
                spent = (fault.count is not None and fault.used >= fault.count) or (
                    fault.duration_s is not None and now - fault.started_at >= fault.duration_s
                )
                if spent:
                    self.faults.pop(0)
                    if self.faults:
                        self.faults[0].started_at = now
                    else:
                        self.healthy_since = now
                    continue
                fault.used += 1
                return fault
            return None

    # -- requests -------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = handler.path.split("?", 1)[0]
        with self.lock:
            self.recorded.requests.append((method, path))
            self.recorded.api_keys.add(handler.headers.get("x-api-key"))
        if method == "GET" and path == "/info":
            self._answer(handler, 200, {})
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        fault = self._current_fault()
        if fault is not None:
            if fault.kind == "close":
                with contextlib.suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)
                handler.close_connection = True
                return
            if fault.kind == "sleep":
                time.sleep(fault.sleep_s)
                with contextlib.suppress(OSError):
                    self._answer(handler, 503, {"detail": "slow"})
                return
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._answer(handler, fault.status, {"detail": "injected"}, headers)
            return
        if self.api_key is not None and handler.headers.get("x-api-key") != self.api_key:
            self._answer(handler, 401, {"detail": "Invalid token"})
            return
        try:
            status = self._route(method, path, handler.headers.get("Content-Type", ""), body)
        except (ValueError, KeyError) as error:
            self._answer(handler, 422, {"detail": f"bad request: {error}"})
            return
        self._answer(handler, status, {})

    def _route(self, method: str, path: str, content_type: str, body: bytes) -> int:
        if method == "POST" and path == "/runs":
            return self._create(json.loads(body))
        if method == "POST" and path == "/runs/batch":
            payload = json.loads(body)
            statuses = [self._create(run) for run in payload.get("post", [])]
            for run in payload.get("patch", []):
                self._patch(str(run["id"]), run)
            return 409 if statuses and all(s == 409 for s in statuses) else 202
        if method == "POST" and path == "/runs/multipart":
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition") or ""
                if isinstance(name, str) and name.startswith("post.") and name.count(".") == 1:
                    self._create(json.loads(part.get_payload(decode=True)))
            return 202
        if method == "PATCH" and path.startswith("/runs/"):
            self._patch(path.rsplit("/", 1)[1], json.loads(body))
            return 200
        return 404

    def _create(self, run: dict[str, Any]) -> int:
        run_id = str(run["id"])
        with self.lock:
            if run_id in self.recorded.runs:
                self.recorded.conflicts[run_id] += 1
                return 409
            self.recorded.runs[run_id] = run
            self.recorded.accepted[run_id] += 1
            return 200

    def _patch(self, run_id: str, update: dict[str, Any]) -> None:
        with self.lock:
            self.recorded.patches.append(update)
            if run_id in self.recorded.runs:
                self.recorded.runs[run_id].update(update)

    def _answer(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        with self.lock:
            self.recorded.answers[status] += 1
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        # Headers and body in one write: two small writes meet Nagle's algorithm and
        # the client's delayed ACK, and every answer would take 40 ms.
        handler._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]
        handler.flush_headers()

    # -- what arrived -----------------------------------------------------------------

    def run_ids(self) -> set[str]:
        with self.lock:
            return set(self.recorded.runs)

    def duplicates(self) -> int:
        """Runs accepted more than once under one id (0 when ids are honoured)."""
        with self.lock:
            return sum(n - 1 for n in self.recorded.accepted.values() if n > 1)


API_KEY = "lsv2_pt_0123456789abcdef0123456789abcdef_0123456789"


@pytest.fixture(name="server")
def langsmith_server() -> Iterator[LangSmithServer]:
    """The server the forwarding tests send to, as their fixture ``server``."""
    with LangSmithServer(api_key=API_KEY) as srv:
        yield srv


def settings_for(server: LangSmithServer, **overrides: object) -> LangSmithSettings:
    values: dict[str, object] = {
        "enabled": True,
        "endpoint": server.url,
        "api_key": API_KEY,
        "project": "fleet",
        "retry_for_s": 60.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "request_timeout_s": 2.0,
        "concurrency": 4,
    }
    values.update(overrides)
    return LangSmithSettings(**values)  # type: ignore[arg-type]


def make_loop(
    client: redis.Redis, keys: Keys, settings: LangSmithSettings, *, name: str = "fwd-1"
) -> ForwardLoop:
    consumer = Consumer(client, keys, LANGSMITH_GROUP, name, claim_idle_ms=60_000)
    return ForwardLoop(consumer, settings, loop=loop_settings(settings, burst=True))


def pending(client: redis.Redis, keys: Keys) -> int:
    total = 0
    for stream in keys.streams:
        if client.exists(stream):
            total += int(client.xpending(stream, LANGSMITH_GROUP)["pending"])  # type: ignore[index]
    return total


def expected_ids(records: list[LLMTrace]) -> set[str]:
    ids = {str(r.trace_id) for r in records}
    ids |= {str(plan_root_id(r.plan_id, r.started_at.date())) for r in records if r.plan_id}
    return ids
