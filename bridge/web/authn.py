"""Where a request is authenticated and authorised: every route calls `authorise` first.

Credentials come only from the `Authorization: Bearer` header, the `__Host-sb_session` cookie or
a client certificate signed by `server.client_ca` — never from a query string or a forwarding
header (`X-Remote-User` and friends mean nothing here). Cookie-authenticated state-changing
requests also need the session's CSRF token in `X-CSRF-Token` and a same-origin `Origin`.
A websocket upgrade with an `Origin` must name exactly this bridge's own origin; one without
`Origin` (never a browser: browsers always send it on upgrades) is accepted only with a bearer
token or client certificate, never with the cookie. `Host` must be one of the bridge's own names
(DNS rebinding). `X-Forwarded-For` is read only when the socket peer is in
`server.trusted_proxies`, and then only for the client address used in audit and throttling.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bridge.access.policy import Identity, Permission, allowed, needs_second_factor
from bridge.access.store import User
from bridge.web.app import STATE, AppState, api_error

SESSION_COOKIE = "__Host-sb_session"
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(entries: tuple[str, ...]) -> list[_Network]:
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return nets


def _in(address: str, nets: list[_Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in nets)


def socket_peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "unknown"


def peer_of(request: web.Request) -> str:
    """The client's address: the socket peer, or, when that peer is a trusted proxy, the
    right-most `X-Forwarded-For` address that is not itself a trusted proxy."""
    peer = socket_peer(request)
    trusted = _networks(request.app[STATE].config.server.trusted_proxies)
    if not trusted or not _in(peer, trusted):
        return peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # garbage from a proxy we trust: stop at the proxy
        if not _in(hop, trusted):
            return hop
    return peer


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


def _identity(user: User, via: str, mfa: bool, **ids: Any) -> Identity:
    ports = frozenset(user.ports) if user.ports is not None else None
    return Identity(user.name, user.role, ports, via, mfa=mfa, **ids)


def certificate_names(peercert: dict[str, Any] | None) -> list[str]:
    """Names a verified client certificate carries: subject CN first, then DNS/email SANs."""
    if not peercert:
        return []
    names = [
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    names += [
        value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "email")
    ]
    return names


def identity_of(request: web.Request) -> Identity | None:
    """The authenticated identity of a request, or None."""
    state = request.app[STATE]
    identity = _identity_of(request, state)
    if identity is not None and needs_second_factor(identity, state.config.server.require_totp):
        return None  # server.require_totp: nobody without a second factor gets in
    return identity


def _identity_of(request: web.Request, state: AppState) -> Identity | None:
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
        return _identity(user, "token", user.totp_secret is not None, token_id=token.id)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is not None:
        session = state.sessions.get(cookie)
        if session is None:
            return None
        user = state.users.get(session.user)
        if user is None or user.generation != session.generation:
            state.sessions.end(session)
            return None
        return _identity(user, "session", session.mfa, session_id=session.key)
    if state.config.server.client_ca is not None and request.transport is not None:
        for name in certificate_names(request.transport.get_extra_info("peercert")):
            user = state.users.get(name)
            if user is not None:
                return _identity(user, "certificate", user.totp_secret is not None)
    return None


def still_valid(
    state: AppState, identity: Identity, users: dict[str, User], token_ids: set[str]
) -> bool:
    """Whether an identity taken earlier (an open websocket's) would still be granted now: the
    session is alive, the token not revoked, the user not deleted, re-keyed or re-roled."""
    user = users.get(identity.user)
    if user is None:
        return False
    current = _identity(user, identity.via, identity.mfa)
    if (current.role, current.ports) != (identity.role, identity.ports):
        return False
    if identity.via == "session":
        session = state.sessions.by_key(identity.session_id or "")
        if session is None or session.generation != user.generation:
            return False
    elif identity.via == "token" and identity.token_id not in token_ids:
        return False
    return not needs_second_factor(identity, state.config.server.require_totp)


def authorise(request: web.Request, permission: Permission, port: str | None = None) -> Identity:
    """Authenticate and authorise a request, or raise 401/403/404 (an unseen port is 404)."""
    check_host(request)
    identity = identity_of(request)
    if identity is None:
        raise api_error(web.HTTPUnauthorized, "authentication required")
    state = request.app[STATE]
    if port is not None and (port not in state.ports or not identity.may_see_port(port)):
        raise api_error(web.HTTPNotFound, f"no port {port!r}")
    if not allowed(identity, permission, port):
        raise api_error(web.HTTPForbidden, f"your role ({identity.role}) may not do this")
    if port is not None and needs_second_factor(identity, state.ports[port].cfg.require_totp):
        raise api_error(web.HTTPForbidden, f"port {port!r} requires TOTP: log in with a code")
    if request.headers.get("Upgrade", "").lower() == "websocket":
        check_upgrade_origin(request, identity)
    elif request.method not in ("GET", "HEAD", "OPTIONS"):
        if identity.via == "session":
            check_csrf(request, identity)
        elif identity.via == "certificate":
            check_not_cross_site(request)
    return identity


def check_not_cross_site(request: web.Request) -> None:
    """A browser presents an installed client certificate to any site's form post, so a
    certificate-authenticated change must not come from another origin (automation sends none)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if (request.headers.get("Origin") is not None and not same_origin(request)) or (
        fetch_site is not None and fetch_site not in ("same-origin", "none")
    ):
        raise api_error(web.HTTPForbidden, "cross-site request refused")


def check_upgrade_origin(request: web.Request, identity: Identity) -> None:
    """Cross-site websocket hijacking: a browser's upgrade always has an Origin, which must be
    ours; without one, only a non-ambient credential (bearer token) or a certificate will do."""
    if request.headers.get("Origin") is None:
        if identity.via == "session":
            raise api_error(web.HTTPForbidden, "websocket without Origin refused for a session")
        return
    if not same_origin(request):
        raise api_error(web.HTTPForbidden, "websocket Origin is not this bridge")


def check_csrf(request: web.Request, identity: Identity) -> None:
    state = request.app[STATE]
    cookie = request.cookies.get(SESSION_COOKIE, "")
    session = state.sessions.get(cookie)
    token = request.headers.get("X-CSRF-Token", "")
    if (
        session is None
        or not token
        or not hmac.compare_digest(token.encode(), session.csrf.encode())
        or not same_origin(request)
    ):
        raise api_error(web.HTTPForbidden, "missing or wrong CSRF token or Origin")
