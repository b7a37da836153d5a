"""The aiohttp application: shared state, routes and the security middleware around every request.

Every response gets the security headers (HSTS, no sniffing, no framing, no referrer, no caching of
API answers). Authentication and authorisation are done per route through `bridge.web.authn`,
which is the one place a request becomes an `Identity`.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from bridge.access.sessions import SessionStore
from bridge.access.store import UserStore
from bridge.config import Config
from bridge.console.port import Port

log = logging.getLogger(__name__)


class Auditor(Protocol):
    def record(self, event: str, **fields: Any) -> None: ...


class NullAudit:
    def record(self, event: str, **fields: Any) -> None:
        return None


@dataclass
class AppState:
    """What every handler may use: config, ports, users, sessions, audit, TLS identity."""

    config: Config
    ports: dict[str, Port]
    users: UserStore
    sessions: SessionStore
    audit: Auditor = field(default_factory=NullAudit)
    fingerprint: str = ""
    started: float = field(default_factory=time.time)
    # open console websockets: id -> closer(code, reason); see bridge.web.console
    sockets: dict[int, Any] = field(default_factory=dict)

    def allowed_hosts(self) -> set[str]:
        """Host names/addresses (lower case, no port) this bridge answers to."""
        hosts = {
            "localhost",
            "127.0.0.1",
            "::1",
            socket.gethostname().lower(),
            socket.getfqdn().lower(),
        }
        hosts.update(h.lower() for h in self.config.server.hostnames)
        for host, _port in self.config.server.listen:
            if host not in ("0.0.0.0", "::", ""):
                hosts.add(host.lower())
        return hosts


STATE: web.AppKey[AppState] = web.AppKey("state", AppState)

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


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
        log.exception("internal error in %s %s", request.method, request.path)
        raise web.HTTPInternalServerError(
            text='{"error": "internal error"}', content_type="application/json"
        ) from None


def api_error(
    cls: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An HTTP error whose body is `{"error": message}`."""
    return cls(
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )


def create_app(state: AppState) -> web.Application:
    from bridge.web import api, console, logapi, pages

    app = web.Application(
        middlewares=[security_headers, internal_errors], client_max_size=64 * 1024
    )
    app[STATE] = state
    api.add_routes(app)
    console.add_routes(app)
    logapi.add_routes(app)
    pages.add_routes(app)
    return app
