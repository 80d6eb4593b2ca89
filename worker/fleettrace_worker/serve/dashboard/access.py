"""Who may see the dashboard, and how a change proves it came from one of its pages.

- Bound to loopback (127.0.0.0/8, ::1, localhost) the pages and ``/api/`` are open to
  this machine. Bound anywhere else they need ``FLEETTRACE_DASHBOARD_TOKEN``: without
  it the command refuses to start (:func:`check_exposure`); with it every page and
  ``/api/`` request must carry the token, as ``Authorization: Bearer <token>`` or as
  the ``fleettrace_token`` cookie that ``/login`` sets (HttpOnly, SameSite=Strict).
- ``/healthz``, ``/readyz``, ``/metrics`` and the static assets stay open, for scrapers,
  probes and the login page itself.
- A change (replaying dead letters) is a POST and needs the CSRF token: the
  ``fleettrace_csrf`` cookie repeated in the ``X-CSRF-Token`` header or the ``csrf``
  form field (double submit: another site can make the browser send the cookie, not
  read it), and an ``Origin``, when the browser sends one, that is this server's.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fleettrace_worker.serve.dashboard.exposure import MIN_TOKEN_CHARS, TOKEN_ENV, check_exposure

__all__ = ["TOKEN_ENV", "TokenMiddleware", "check_exposure", "csrf_problem", "csrf_token"]

TOKEN_COOKIE: Final = "fleettrace_token"  # noqa: S105 (a cookie name)
CSRF_COOKIE: Final = "fleettrace_csrf"
CSRF_HEADER: Final = "x-csrf-token"
CSRF_FIELD: Final = "csrf"
#: Paths served without the token: probes, scrapers, the login page and its assets.
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics", "/login"})
OPEN_PREFIXES: Final = ("/static/",)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def presented_token(connection: HTTPConnection) -> str:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return connection.cookies.get(TOKEN_COOKIE, "")


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class TokenMiddleware:
    """Turns away page and ``/api/`` requests without the token (when one is set)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        if same_secret(presented_token(connection), self.token):
            await self.app(scope, receive, send)
            return
        response: Response
        if scope["path"].startswith("/api/"):
            response = JSONResponse(
                {"error": f"this dashboard needs its token: Authorization: Bearer <{TOKEN_ENV}>"},
                status_code=401,
            )
        else:
            response = RedirectResponse("/login", status_code=303)
        await response(scope, receive, send)


def csrf_token(connection: HTTPConnection) -> tuple[str, bool]:
    """(the CSRF token of this browser, whether it is new and needs setting)."""
    known = connection.cookies.get(CSRF_COOKIE, "")
    if len(known) >= MIN_TOKEN_CHARS:
        return known, False
    return secrets.token_urlsafe(24), True


def set_csrf_cookie(response: Response, token: str) -> None:
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path="/")


def csrf_problem(connection: HTTPConnection, given: str) -> str | None:
    """Why this POST is not accepted as coming from a dashboard page, or None."""
    origin = connection.headers.get("origin")
    if origin is not None:
        host = connection.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            return "this change came from another site's page (its Origin is not this server)"
    expected = connection.cookies.get(CSRF_COOKIE, "")
    if len(expected) < MIN_TOKEN_CHARS or not given or not same_secret(given, expected):
        return "this change lacks the page's CSRF token: reload the page and try again"
    return None
