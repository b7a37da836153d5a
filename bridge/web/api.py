"""The JSON HTTP API: login/logout, the ports list, SysRq/NMI/power actions and health.

Every handler starts with `authorise(...)` naming the permission it needs; actions answer JSON
saying what was done and when.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from aiohttp import web

from bridge.access import totp
from bridge.access.gate import Denied
from bridge.access.policy import Permission, allowed
from bridge.common import strictjson
from bridge.config import parse_duration
from bridge.console.actions import audited
from bridge.console.port import Port, PortError
from bridge.console.sysrq import validate_keys
from bridge.hw.interfaces import UnsupportedAction
from bridge.web.authn import (
    SESSION_COOKIE,
    authorise,
    check_host,
    http_error,
    peer_of,
    same_origin,
)
from bridge.web.state import STATE, api_error, port_error

MAX_PASSWORD = 1024
BODY_TIMEOUT = 10.0  # a request body must arrive within this (slow-body clients are cut off)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            body = await request.json(loads=strictjson.loads)
    except TimeoutError:
        raise api_error(web.HTTPRequestTimeout, "the request body came too slowly") from None
    except ValueError as exc:  # malformed, NaN/Infinity, too deep, not UTF-8
        message = f"the body must be a JSON object ({str(exc)[:80]})"
        raise api_error(web.HTTPBadRequest, message) from None
    if not isinstance(body, dict):
        raise api_error(web.HTTPBadRequest, "the body must be a JSON object")
    return body


def _port(request: web.Request) -> Port:
    return request.app[STATE].ports[request.match_info["name"]]


async def login(request: web.Request) -> web.Response:
    """Password (+ TOTP code when enrolled) -> a fresh session. Throttled before any checking;
    every failure looks and costs the same whatever was wrong, and is audited with the peer."""
    check_host(request)
    state = request.app[STATE]
    if request.headers.get("Origin") is not None and not same_origin(request):
        raise api_error(web.HTTPForbidden, "cross-origin login refused")
    if state.config.oidc is not None and not state.config.oidc.password_login:
        raise api_error(web.HTTPForbidden, "password sign-in is off here: use single sign-on")
    body = await _json_body(request)
    username, password, code = body.get("username"), body.get("password"), body.get("totp")
    if not isinstance(username, str) or not isinstance(password, str):
        raise api_error(web.HTTPBadRequest, "username and password are required strings")
    if len(password) > MAX_PASSWORD or len(username) > 64:
        raise api_error(web.HTTPBadRequest, "username or password too long")
    if code == "":
        code = None  # an empty code field in a login form
    if code is not None and not totp.well_formed(code):
        raise api_error(web.HTTPBadRequest, "totp must be a short string of digits")
    try:
        user = await state.gate.login(username, password, code, peer_of(request))
    except Denied as denied:
        raise http_error(denied) from None
    mfa = user.totp_secret is not None
    old = state.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if old is not None:
        state.sessions.end(old)  # never keep a session id from before the login
    session_id, session = state.sessions.create(user.name, user.generation, mfa)
    state.audit.record("login", user=user.name, peer=peer_of(request), ok=True, mfa=mfa)
    response = web.json_response({"user": user.name, "role": user.role, "csrf": session.csrf})
    response.set_cookie(
        SESSION_COOKIE, session_id, secure=True, httponly=True, samesite="Strict", path="/"
    )
    return response


async def logout(request: web.Request) -> web.Response:
    """End this session and close its console websockets (1008) at once."""
    state = request.app[STATE]
    identity = authorise(request, Permission.READ)
    answer: dict[str, Any] = {"ok": True}
    if identity.via == "session":
        session = state.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if session is not None:
            state.sessions.end(session)
            if session.grant is not None and state.gate.oidc is not None:  # single sign-on
                url = await state.gate.oidc.end_session_url(f"https://{request.host}/login")
                if url:
                    answer["end_session"] = url  # the page goes there: the provider's logout
        await state.consoles.end(state.consoles.of(session_key=identity.session_id), "logged out")
    state.audit.record("logout", user=identity.user, peer=peer_of(request))
    response = web.json_response(answer)
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


async def whoami(request: web.Request) -> web.Response:
    identity = authorise(request, Permission.READ)
    return web.json_response(
        {
            "user": identity.user,
            "role": identity.role,
            "via": identity.via,
            "ports": sorted(identity.ports) if identity.ports is not None else None,
        }
    )


def port_summary(port: Port) -> dict[str, Any]:
    cfg = port.cfg
    status = port.status()
    return {
        "name": port.name,
        "description": cfg.description,
        "enabled": cfg.enabled,
        "online": port.online,
        "baud": cfg.baud,
        "framing": str(cfg.framing),
        "writer": status["writer"],
        "viewers": len(port.attachments),
        "power": port.lines.power_state(),
        "lines": sorted(port.lines.supported()),
        "offset": port.offset,
        **port.watch.summary(),  # alerts per rule, boots, last_boot_seconds
        "playbook": port.rescue.status(),  # the recovery playbook running, if any
    }


async def list_ports(request: web.Request) -> web.Response:
    identity = authorise(request, Permission.READ)
    ports = request.app[STATE].ports
    admin = allowed(identity, Permission.ADMIN)
    listed = []
    for name, port in sorted(ports.items()):
        if identity.may_see_port(name):
            listed.append(summary := port_summary(port))
            if admin and port.ringlog is not None:  # a disk fault names paths: admins only
                summary["log"] = port.ringlog.health.status()
    return web.json_response(listed)


async def health(request: web.Request) -> web.Response:
    """Admins: whether every store under state_dir can be written (bridge.history.health)."""
    authorise(request, Permission.ADMIN)
    stores = request.app[STATE].storage()
    return web.json_response(
        {
            "ok": all(h.ok for h in stores.values()),
            "storage": {name: h.status() for name, h in stores.items()},
        }
    )


async def _run_action(
    request: web.Request, user: str, what: str, coro: Any, **fields: Any
) -> web.Response:
    """Run a port action (audited whatever ends it) and map port errors to HTTP statuses."""
    where = {"user": user, "port": request.match_info["name"], "peer": peer_of(request)}
    record = request.app[STATE].audit.record
    try:
        result = await audited(record, what, coro, **where, **fields)
    except UnsupportedAction as exc:
        raise api_error(web.HTTPNotImplemented, str(exc)) from None
    except PortError as exc:
        raise port_error(exc) from None
    return web.json_response(result)


async def sysrq(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    identity = authorise(request, Permission.WRITE, name)
    body = await _json_body(request)
    port = _port(request)
    try:
        keys = validate_keys(body.get("keys", ""), port.cfg.sysrq_deny)  # never str() it
        interval = parse_duration(body.get("interval", "1s"))
    except ValueError as exc:
        raise api_error(web.HTTPBadRequest, str(exc)) from None
    valid = partial(request.app[STATE].gate.granted_now, identity, name)  # ends with it
    coro = port.sysrq(keys, interval, identity.user, valid)
    return await _run_action(request, identity.user, "sysrq", coro, keys=keys)


async def cancel(request: web.Request) -> web.Response:
    """Stop the port's running SysRq sequence before its next key: an admin anyone's, an
    operator their own."""
    name = request.match_info["name"]
    identity = authorise(request, Permission.WRITE, name)
    any_user = allowed(identity, Permission.ADMIN)

    async def run() -> dict[str, Any]:
        return _port(request).cancel_action(identity.user, any_user)

    return await _run_action(request, identity.user, "cancel", run())


async def send_break(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    identity = authorise(request, Permission.WRITE, name)
    return await _run_action(
        request, identity.user, "break", _port(request).send_break(identity.user)
    )


async def nmi(request: web.Request) -> web.Response:
    identity = authorise(request, Permission.LINES, request.match_info["name"])
    return await _run_action(
        request, identity.user, "nmi", _port(request).line_action("nmi", identity.user)
    )


async def reset(request: web.Request) -> web.Response:
    identity = authorise(request, Permission.LINES, request.match_info["name"])
    return await _run_action(
        request, identity.user, "reset", _port(request).line_action("reset", identity.user)
    )


POWER_ACTIONS = ("on", "off", "force-off", "reset", "cycle", "status")


async def power(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _json_body(request) if request.can_read_body else {}
    action = body.get("action")
    permission = Permission.READ if action == "status" else Permission.LINES
    identity = authorise(request, permission, name)
    if action not in POWER_ACTIONS:
        raise api_error(web.HTTPBadRequest, f"action must be one of {', '.join(POWER_ACTIONS)}")
    verb = "reset" if action == "reset" else f"power:{action}"
    coro = _port(request).line_action(verb, identity.user)
    if action == "status":
        try:
            return web.json_response(await coro)
        except PortError as exc:
            raise port_error(exc) from None
    return await _run_action(request, identity.user, "power", coro, action=action)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_get("/api/ports", list_ports)
    app.router.add_post("/api/ports/{name}/sysrq", sysrq)
    app.router.add_post("/api/ports/{name}/break", send_break)
    app.router.add_post("/api/ports/{name}/cancel", cancel)
    app.router.add_post("/api/ports/{name}/nmi", nmi)
    app.router.add_post("/api/ports/{name}/reset", reset)
    app.router.add_post("/api/ports/{name}/power", power)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/health", health)
