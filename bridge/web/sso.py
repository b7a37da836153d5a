"""Single sign-on for the web door (OpenID Connect, `[oidc]`): the HTTP half of the flow.

- `GET /api/sso`: whether the sign-in page offers "Sign in with NAME" and the password form.
- `GET /oidc/login?next=PATH`: starts a flow (bridge.access.oidc: PKCE, state, nonce) and sends
  the browser to the provider. The flow's `state` is also put in a short-lived cookie
  (`__Host-sb_oidc`, SameSite=Lax so that it comes back on the provider's redirect), so the
  callback is bound to the browser that started it.
- `GET /oidc/callback?code&state`: the state must match that cookie and a pending flow; the code
  is exchanged and the ID token verified; `Gate.identify_oidc` maps its claims to a role and
  ports (no mapped group: refused). The session it makes is an ordinary one (same cookie, idle
  and absolute lifetimes, CSRF token) holding that grant. The session cookie is SameSite=Strict:
  a browser does not send it on the redirect chain that started at the provider, so the callback
  answers with a small page of ours that moves on to `next`, a same-site navigation that carries
  the cookie.
- A middleware fetches the provider's keys before a request whose bearer token is a JWT is
  identified (`Gate.prepare_token`), so an IdP access token can be used as an API token.

Every sign-in, good or refused, is audited (`login` with `via: "oidc"`) and counted.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge.access.oidc import OidcError
from bridge.web.authn import SESSION_COOKIE, check_host, peer_of
from bridge.web.pages import local_path
from bridge.web.state import STATE, api_error

log = logging.getLogger(__name__)
FLOW_COOKIE = "__Host-sb_oidc"


async def sso_info(request: web.Request) -> web.Response:
    check_host(request)
    cfg = request.app[STATE].config.oidc
    if cfg is None or request.app[STATE].gate.oidc is None:
        return web.json_response({"enabled": False, "password_login": True})
    return web.json_response(
        {"enabled": True, "name": cfg.name, "password_login": cfg.password_login}
    )


def _redirect_uri(request: web.Request) -> str:
    return f"https://{request.host}/oidc/callback"  # Host is one of ours (check_host)


async def sso_login(request: web.Request) -> web.StreamResponse:
    check_host(request)
    client = request.app[STATE].gate.oidc
    if client is None:
        raise api_error(web.HTTPNotFound, "single sign-on is not configured")
    nxt = request.query.get("next", "/")
    if not local_path(nxt):
        nxt = "/"
    try:
        flow, url = await client.begin(_redirect_uri(request), nxt)
    except OidcError as exc:
        log.warning("single sign-on: %s", exc)
        raise api_error(web.HTTPBadGateway, "the identity provider cannot be reached") from None
    response = web.HTTPFound(url)
    response.set_cookie(
        FLOW_COOKIE, flow.state, secure=True, httponly=True, samesite="Lax", path="/", max_age=600
    )
    raise response


def _page(title: str, body: str, refresh: str | None = None) -> web.Response:
    meta = f'<meta http-equiv="refresh" content="0;url={html.escape(refresh)}">' if refresh else ""
    return web.Response(
        text=(
            f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
            f"<title>{html.escape(title)} · serial-bridge</title></head>"
            f"<body><p>{body}</p></body></html>"
        ),
        content_type="text/html",
    )


async def sso_callback(request: web.Request) -> web.Response:
    check_host(request)
    state = request.app[STATE]
    gate, peer = state.gate, peer_of(request)
    if gate.oidc is None:
        raise api_error(web.HTTPNotFound, "single sign-on is not configured")
    flow_state = request.query.get("state", "")
    try:
        if not flow_state or request.cookies.get(FLOW_COOKIE) != flow_state:
            raise OidcError("state does not match this browser's sign-in")
        flow = gate.oidc.take_flow(flow_state)
        if "error" in request.query:
            raise OidcError(f"the provider answered {request.query['error'][:64]!r}")
        claims, _ = await gate.oidc.finish(flow, request.query.get("code", ""))
    except OidcError as exc:
        gate.count("oidc", None)
        state.audit.record("login", user=None, peer=peer, ok=False, via="oidc", reason=str(exc))
        response = _page("Sign-in failed", 'Single sign-on failed. <a href="/login">Try again</a>.')
        response.set_status(403)
        return response
    identity = gate.count("oidc", gate.identify_oidc(claims))
    if identity is None:
        state.audit.record(
            "login", user=None, peer=peer, ok=False, via="oidc", reason="no mapped group"
        )
        response = _page(
            "Not allowed", "Your account has no role on this bridge (no mapped group)."
        )
        response.set_status(403)
        return response
    old = state.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if old is not None:
        state.sessions.end(old)
    session_id, session = state.sessions.create(identity.user, 0, identity.mfa)
    session.grant = (identity.role, identity.ports)
    state.audit.record(
        "login", user=identity.user, peer=peer, ok=True, via="oidc", role=identity.role
    )
    # not a redirect: the Strict session cookie would not come along on it (see above)
    response = _page(
        "Signed in", f'Signed in. <a href="{html.escape(flow.next)}">Continue</a>.', flow.next
    )
    response.set_cookie(
        SESSION_COOKIE, session_id, secure=True, httponly=True, samesite="Strict", path="/"
    )
    response.del_cookie(FLOW_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return response


@web.middleware
async def provider_keys(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Fetch the provider's keys before a JWT bearer token is identified (sync) by a route."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and request.app[STATE].gate.oidc is not None:
        await request.app[STATE].gate.prepare_token(auth[7:])
    return await handler(request)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/sso", sso_info)
    app.router.add_get("/oidc/login", sso_login)
    app.router.add_get("/oidc/callback", sso_callback)
