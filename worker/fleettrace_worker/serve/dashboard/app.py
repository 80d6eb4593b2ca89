"""The one ASGI application: the probes and ``/metrics`` always, the dashboard's pages,
``/api/`` and ``/static/`` when asked for.

Every response carries a Content-Security-Policy that allows scripts, styles and
images from this server only (no CDN, no inline script), ``nosniff`` and no framing.
Responses are gzipped for clients that ask (``/metrics`` scrapers included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleettrace_worker.serve.dashboard.access import TokenMiddleware
from fleettrace_worker.serve.dashboard.api import api_routes
from fleettrace_worker.serve.dashboard.context import Dashboard, DashboardSettings
from fleettrace_worker.serve.dashboard.overview_page import overview_routes
from fleettrace_worker.serve.dashboard.pages import page_routes
from fleettrace_worker.serve.dashboard.performance import performance_routes
from fleettrace_worker.serve.dashboard.plan_pages import plan_routes
from fleettrace_worker.serve.dashboard.samples import sample_routes

__all__ = ["STATIC_DIR", "DashboardSettings", "build_app"]

STATIC_DIR: Final = Path(__file__).parent / "static"
SECURITY_HEADERS: Final = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)
#: Compress bodies from this size on, for clients that send Accept-Encoding: gzip.
GZIP_MIN_BYTES: Final = 500


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, sending)


def _not_found(request: Request, error: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": "no such endpoint (docs/dashboard.md)"}, status_code=404)
    dashboard = request.app.state.dashboard
    hint = "/, /cost, /performance, /plans, /dlq, " if dashboard else ""
    return PlainTextResponse(f"not found: try {hint}/healthz, /readyz or /metrics\n", 404)


def _not_allowed(request: Request, error: Exception) -> Response:
    return PlainTextResponse("method not allowed\n", status_code=405)


def build_app(probes: list[BaseRoute], settings: DashboardSettings | None) -> Starlette:
    """The probes (and ``/metrics``) and, with ``settings``, the dashboard."""
    routes = list(probes)
    token = None
    if settings is not None:
        board = Dashboard(settings)
        token = settings.token
        routes += api_routes(board)
        routes += overview_routes(board)
        routes += page_routes(board)
        routes += performance_routes(board)
        routes += sample_routes(board)
        routes += plan_routes(board)
        routes.append(Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES),
            Middleware(TokenMiddleware, token=token),
        ],
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    app.state.dashboard = settings is not None
    app.state.token = token
    return app
