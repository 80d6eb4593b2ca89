"""A LangSmith-compatible endpoint that accepts everything: ``GET /info`` answers
``{}`` and every POST/PATCH answers 200, so ``@traceable`` pays its full client-side
cost (serialising, queueing, a background thread posting batches) and nothing else.

Runs as its own process on 127.0.0.1 so that its work does not share the measured
interpreter: ``python -m benchmarks.load.sink`` prints the port it listens on.
``GET /_posts`` tells how many requests with a body arrived (proof tracing was on).
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_posts = [0]
_posts_lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, body: bytes = b"{}") -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/_posts"):
            with _posts_lock:
                self._answer(str(_posts[0]).encode())
            return
        self._answer()

    def _consume(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with _posts_lock:
            _posts[0] += 1
        self._answer()

    do_POST = _consume
    do_PATCH = _consume

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
