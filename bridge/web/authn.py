"""How the web front door turns a request into a decision: every route calls `authorise` first.

This module is the HTTP half: it finds the credential in the request and checks what only HTTP
has (Host, Origin, CSRF, forwarding headers); the decision itself — which identity, which
permission on which port — is `bridge.access.gate`'s, the same for every front door.

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

from bridge.access.gate import Denied, Refusal
from bridge.access.policy import Identity, Permission
from bridge.web.state import STATE, api_error

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
    """The authenticated identity of a request, or None. Credentials come from the
    `Authorization: Bearer` header, else the session cookie, else a verified client certificate."""
    gate = request.app[STATE].gate
    auth = request.headers.get("Authorization")
    if auth is not None:
        scheme, _, secret = auth.partition(" ")
        return gate.identify_token(secret) if scheme.lower() == "bearer" else None
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is not None:
        return gate.identify_session(cookie)
    if request.app[STATE].config.server.client_ca is not None and request.transport is not None:
        return gate.identify_certificate(
            certificate_names(request.transport.get_extra_info("peercert"))
        )
    return None


HTTP_REFUSALS: dict[Refusal, type[web.HTTPException]] = {
    Refusal.UNAUTHENTICATED: web.HTTPUnauthorized,
    Refusal.NOT_FOUND: web.HTTPNotFound,
    Refusal.FORBIDDEN: web.HTTPForbidden,
    Refusal.THROTTLED: web.HTTPTooManyRequests,
    Refusal.BUSY: web.HTTPServiceUnavailable,
}


def http_error(denied: Denied) -> web.HTTPException:
    """The HTTP answer to an access refusal (429 with Retry-After when throttled)."""
    headers = {"Retry-After": str(denied.retry_after)} if denied.retry_after else None
    return api_error(HTTP_REFUSALS[denied.refusal], denied.message, headers=headers)


def authorise(request: web.Request, permission: Permission, port: str | None = None) -> Identity:
    """Authenticate and authorise a request, or raise 401/403/404 (an unseen port is 404)."""
    check_host(request)
    try:
        identity = request.app[STATE].gate.authorise(identity_of(request), permission, port)
    except Denied as denied:
        raise http_error(denied) from None
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
