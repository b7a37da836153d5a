"""Where a request is authenticated and authorised: every route calls `authorise` first.

Credentials come only from the `Authorization: Bearer` header or the `__Host-sb_session` cookie,
never from a query string. Cookie-authenticated state-changing requests also need the session's
CSRF token in `X-CSRF-Token` and a same-origin `Origin`; websocket upgrades need an `Origin`
that is exactly this bridge's own. `Host` must be one of the bridge's own names (DNS rebinding).
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from aiohttp import web

from bridge.auth.policy import Identity, Permission, allowed
from bridge.web.app import STATE, api_error

SESSION_COOKIE = "__Host-sb_session"


def peer_of(request: web.Request) -> str:
    """The client's address as the socket sees it (forwarding headers are not trusted)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "unknown"


def host_name(request: web.Request) -> str:
    """The Host header's name part, lower case, brackets removed from an IPv6 literal."""
    host = request.headers.get("Host", "")
    try:
        return (urlsplit(f"//{host}").hostname or "").lower()
    except ValueError:
        return ""


def check_host(request: web.Request) -> None:
    if host_name(request) not in request.app[STATE].allowed_hosts():
        raise api_error(web.HTTPForbidden, "unknown Host; add it to server.hostnames")


def same_origin(request: web.Request) -> bool:
    """True when Origin is exactly https://<Host> for an allowed host, or a configured origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    state = request.app[STATE]
    if origin in state.config.server.origins:
        return True
    host = request.headers.get("Host", "")
    return origin == f"https://{host}" and host_name(request) in state.allowed_hosts()


def identity_of(request: web.Request) -> Identity | None:
    """The authenticated identity of a request, or None."""
    state = request.app[STATE]
    auth = request.headers.get("Authorization")
    if auth is not None:
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = state.users.check_token(secret.strip())
        if token is None:
            return None
        user = state.users.get(token.user)
        if user is None:
            return None
        ports = frozenset(user.ports) if user.ports is not None else None
        return Identity(user.name, user.role, ports, "token", token_id=token.id)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        return None
    session = state.sessions.get(cookie)
    if session is None:
        return None
    user = state.users.get(session.user)
    if user is None or user.generation != session.generation:
        state.sessions.end(session)
        return None
    ports = frozenset(user.ports) if user.ports is not None else None
    return Identity(user.name, user.role, ports, "session", session_id=session.key)


def authorise(request: web.Request, permission: Permission, port: str | None = None) -> Identity:
    """Authenticate and authorise a request, or raise 401/403/404 (an unseen port is 404)."""
    check_host(request)
    identity = identity_of(request)
    if identity is None:
        raise api_error(web.HTTPUnauthorized, "authentication required")
    if port is not None and (
        port not in request.app[STATE].ports or not identity.may_see_port(port)
    ):
        raise api_error(web.HTTPNotFound, f"no port {port!r}")
    if not allowed(identity, permission, port):
        raise api_error(web.HTTPForbidden, f"your role ({identity.role}) may not do this")
    if request.method not in ("GET", "HEAD", "OPTIONS") and identity.via == "session":
        check_csrf(request, identity)
    return identity


def check_csrf(request: web.Request, identity: Identity) -> None:
    state = request.app[STATE]
    cookie = request.cookies.get(SESSION_COOKIE, "")
    session = state.sessions.get(cookie)
    token = request.headers.get("X-CSRF-Token", "")
    if (
        session is None
        or not token
        or not hmac.compare_digest(token, session.csrf)
        or not same_origin(request)
    ):
        raise api_error(web.HTTPForbidden, "missing or wrong CSRF token or Origin")
