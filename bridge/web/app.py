"""The aiohttp application: the routes and the security middleware around every request.

Every response gets the security headers (HSTS, no sniffing, no framing, no referrer, no caching of
API answers) and `Server: serial-bridge`, with no versions for a scanner to match against.
Authentication and authorisation are done per route through `bridge.web.authn`, which turns a
request's credentials into an `Identity` through `bridge.access.gate`. Shared state lives in
`bridge.web.state`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web, web_response

from bridge.web import api, console, logapi, metrics, pages, rescue, sso
from bridge.web.state import STATE, AppState

log = logging.getLogger(__name__)

SERVER_NAME = "serial-bridge"
SECURITY_HEADERS = {
    "Server": SERVER_NAME,
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def log_safe(text: str) -> str:
    """Text from a client made safe for a log line: controls (a decoded %0a or %1b), quotes,
    backslashes and anything not printable become visible escapes, so nobody can forge a line or
    send escape sequences to whoever reads the log."""
    return "".join(
        ch if ch.isprintable() and ch not in '"\\' else f"\\x{ord(ch):02x}" for ch in text
    )


@web.middleware
async def security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def internal_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An unexpected exception is a JSON 500 that names no secret; the log gets the traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("internal error in %s %s", log_safe(request.method), log_safe(request.path))
        raise web.HTTPInternalServerError(
            text='{"error": "internal error"}', content_type="application/json"
        ) from None


def create_app(state: AppState) -> web.Application:
    # aiohttp names itself and Python, with versions, in the Server header of every response —
    # also of the 400s its parser sends before any middleware runs; this constant is its only
    # switch (the middleware above covers every response of the app itself).
    web_response.SERVER_SOFTWARE = SERVER_NAME
    app = web.Application(
        middlewares=[security_headers, internal_errors, sso.provider_keys],
        client_max_size=64 * 1024,
    )
    app[STATE] = state
    api.add_routes(app)
    console.add_routes(app)
    logapi.add_routes(app)
    metrics.add_routes(app)
    rescue.add_routes(app)
    sso.add_routes(app)
    pages.add_routes(app)
    return app
