"""The console websocket: `WS /api/ports/{name}/console?mode=ro|rw&takeover=0|1&from=N|replay=N`.

Binary frames carry bytes (server->client: target output; client->server: keystrokes from the
writer). Text frames carry JSON control messages (see docs/protocol.md). Output is written
straight to the connection's transport as frames built once per chunk (bridge.web.frames); the
kernel socket buffer plus a per-client budget absorb bursts, and a client over budget is caught up
by its Subscriber (bridge.console.fanout) without slowing anyone else.

Replies to what a client sends (pong, error, result) are queued like output and obey the same
budget: a client that keeps sending but does not read is cut off once its queue passes the port's
`client_buffer` (plus REPLY_MARGIN), instead of growing the daemon's memory. Error replies are
short (MAX_ERROR characters, never an echo of a whole message) and rate-limited (ERROR_BURST at
once, ERROR_RATE a second after that; the ones left out are counted in the next).

When the bridge closes a connection itself (1008, 1001, 1009, 1013) it sends its close frame, sends
nothing after it, and waits up to CLOSE_WAIT seconds for the client's close frame before it closes
the TCP connection (TLS close_notify, FIN): the client reads the code and reason, and its reply
does not meet a closed socket. `end()` comes from another task (the credential watcher, a logout,
a reload) while the session's reader waits for a frame; aiohttp's `close()` called from there
breaks the reader's wait and then drops the connection at once, so `end()` stops the reader and
the session's own task closes. `end()` returns once the session has left the port (its writer's
`on_release` sent), at most CLOSE_WAIT + END_MARGIN later: a stopping bridge closes its ports
right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import Any

from aiohttp import WSMsgType, web

from bridge.access.policy import Identity, Permission, allowed
from bridge.common import strictjson
from bridge.config import parse_duration
from bridge.console.actions import audited
from bridge.console.fanout import Chunk
from bridge.console.port import Attachment, Port, PortError
from bridge.console.sysrq import validate_keys
from bridge.hw.interfaces import UnsupportedAction
from bridge.web.authn import authorise, peer_of, same_origin
from bridge.web.frames import binary_frame, text_frame
from bridge.web.state import STATE, AppState, api_error, port_error

log = logging.getLogger(__name__)
MAX_FRAME = 64 * 1024
LOW_WATER = 256 * 1024
REPLY_MARGIN = 256 * 1024  # over client_buffer: output alone never queues this much
MAX_ERROR = 200
ERROR_BURST, ERROR_RATE = 10, 5.0
CLOSE_WAIT = 2.0  # seconds a closing server waits for the client's close frame, then drops it
END_MARGIN = 1.0  # end() waits CLOSE_WAIT + this at most for the session to be over
_detached: set[asyncio.Task[None]] = set()  # actions of closed sessions, running to their end


class WsViewer:
    """A websocket connection as an Outlet/Viewer of the hub: writes frames to its transport."""

    def __init__(self, request: web.Request) -> None:
        transport = request.transport
        assert transport is not None
        self.transport = transport
        self.protocol: Any = request.protocol
        self.stopped = False  # a close frame is (about to be) sent: nothing may follow it

    def _open(self) -> bool:
        return not self.stopped and not self.transport.is_closing()

    def send_chunk(self, chunk: Chunk) -> None:
        if self._open():
            self.transport.write(chunk.encoded(binary_frame))

    def send_history(self, offset: int, data: bytes) -> None:
        if self._open():
            self.transport.write(binary_frame(data))

    def send_gap(self, start: int, end: int) -> None:
        self.send_message({"type": "gap", "from": start, "to": end})

    def send_message(self, message: dict[str, Any]) -> None:
        if self._open():
            self.transport.write(text_frame(message))

    def backlog(self) -> int:
        return self.transport.get_write_buffer_size()

    def cut_off(self) -> None:
        """Drop the connection at once (it does not read: a close handshake would wait)."""
        self.transport.abort()

    async def drained(self) -> None:
        while self.transport.is_closing() or self.transport.get_write_buffer_size() > LOW_WATER:
            if getattr(self.protocol, "_paused", False) and not self.transport.is_closing():
                await self.protocol._drain_helper()
            else:
                await asyncio.sleep(0.01)


def _query_int(request: web.Request, name: str, what: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise api_error(web.HTTPBadRequest, f"{name} must be {what}") from None


def _start(request: web.Request, port: Port) -> int:
    """`from=OFFSET` (negative: the last N bytes), `replay=N` (the last N bytes from a line
    start), or neither (live output only)."""
    start = _query_int(request, "from", "an integer offset")
    replay = _query_int(request, "replay", "a number of bytes")
    if replay is None:
        return port.resolve_from(start)
    if start is not None:
        raise api_error(web.HTTPBadRequest, "give from or replay, not both")
    if replay < 0:
        raise api_error(web.HTTPBadRequest, "replay must be a number of bytes")
    return port.replay_start(replay)


class ConsoleSession:
    """One websocket client attached to one port."""

    def __init__(
        self,
        state: AppState,
        port: Port,
        identity: Identity,
        ws: web.WebSocketResponse,
        att: Attachment,
        viewer: WsViewer,
    ) -> None:
        self.state, self.port, self.identity, self.ws, self.att = state, port, identity, ws, att
        self.viewer = viewer
        self.tasks: set[asyncio.Task[None]] = set()
        self._errors = float(ERROR_BURST)  # error replies that may go out now (a token bucket)
        self._errors_at = time.monotonic()
        self._errors_left_out = 0
        self._closing: tuple[int, bytes] | None = None  # the close frame to send: code, reason
        self._reader: asyncio.Task[None] | None = None
        self._idle = False  # the reader waits for a frame (not in the middle of handling one)
        self.over = asyncio.Event()  # closed and detached from the port

    # as an OpenConsole (bridge.access.consoles)
    @property
    def port_name(self) -> str:
        return self.port.name

    @property
    def last_input(self) -> float:
        return self.att.last_input

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def end(self, reason: str, going_away: bool = False) -> None:
        """Close 1008 (policy: the credential ended) or 1001 (going away) with `reason`: the
        reader stops (at once if it waits for a frame, else after the one it handles) and `run`
        closes. Output stops now; returns once the session is over (at most CLOSE_WAIT +
        END_MARGIN later)."""
        self._close_with(1001 if going_away else 1008, reason)
        if self._idle and self._reader is not None:
            self._reader.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.over.wait(), CLOSE_WAIT + END_MARGIN)

    def _close_with(self, code: int, reason: str) -> None:
        if self._closing is None and not self.ws.closed:
            self._closing = (code, reason.encode()[:120])
            self.viewer.stopped = True

    def reply(self, message: dict[str, Any]) -> None:
        """Answer something the client sent, or cut it off if it is not reading its answers."""
        if self.viewer.backlog() > self.port.cfg.client_buffer + REPLY_MARGIN:
            log.info("port %s: %s sends but does not read; cut off", self.port.name, self.att.peer)
            self.viewer.cut_off()
            return
        self.viewer.send_message(message)

    def error(self, message: str) -> None:
        """A short error reply, rate-limited; those left out are counted in the next one."""
        now = time.monotonic()
        self._errors = min(ERROR_BURST, self._errors + (now - self._errors_at) * ERROR_RATE)
        self._errors_at = now
        if self._errors < 1:
            self._errors_left_out += 1
            return
        self._errors -= 1
        if len(message) > MAX_ERROR:
            message = message[: MAX_ERROR - 1] + "…"
        if self._errors_left_out:
            message += f" ({self._errors_left_out} more errors not shown)"
            self._errors_left_out = 0
        self.reply({"type": "error", "message": message})

    def may(self, permission: Permission) -> bool:
        return allowed(self.identity, permission, self.port.name)

    async def keystrokes(self, data: bytes) -> None:
        if not self.may(Permission.WRITE):
            self.error("your role may only read this port; keystrokes refused")
            return
        try:
            await self.port.write(self.att, data)
        except PortError as exc:
            self.error(f"keystrokes refused: {exc}")

    async def control(self, text: str) -> None:
        try:
            message = strictjson.loads(text)
        except ValueError as exc:  # malformed, NaN/Infinity, too deep
            self.error(f"malformed JSON control message ({str(exc)[:80]})")
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            self.reply({"type": "pong"})
            return
        if kind not in ("sysrq", "break", "cancel", "takeover", "release"):
            self.error(f"unknown message type {kind!r}")
            return
        if not self.may(Permission.WRITE):
            self.error(f"your role may not {kind} on this port")
            return
        if kind == "takeover":
            self.port.take_over(self.att)
        elif kind == "release":
            await self.port.release(self.att)
        elif kind == "break":
            self._spawn(self._action("break", self.port.send_break(self.identity.user)))
        elif kind == "cancel":
            any_user = self.may(Permission.ADMIN)
            await self._action("cancel", self._cancel(any_user))
        else:
            try:
                keys = validate_keys(message.get("keys", ""), self.port.cfg.sysrq_deny)
                interval = parse_duration(message.get("interval", "1s"))
            except ValueError as exc:
                self.error(str(exc))
                return
            valid = partial(self.state.gate.granted_now, self.identity, self.port.name)
            coro = self.port.sysrq(keys, interval, self.identity.user, valid)
            self._spawn(self._action("sysrq", coro, keys=keys))

    async def _cancel(self, any_user: bool) -> dict[str, Any]:
        return self.port.cancel_action(self.identity.user, any_user)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _action(self, action: str, coro: Any, **fields: Any) -> None:
        """Run an action (audited whatever ends it) and answer with its result."""
        where = {"user": self.identity.user, "port": self.port.name, "peer": self.att.peer}
        try:
            result = await audited(self.state.audit.record, action, coro, **where, **fields)
        except (PortError, UnsupportedAction) as exc:
            self.error(f"{action} refused: {exc}")
            return
        self.reply({"type": "result", **result})

    async def run(self) -> None:
        """Handle the client's frames until it closes or breaks, or the session is closed (then
        send the close frame and wait up to CLOSE_WAIT for the client's)."""
        reader = self._reader = asyncio.get_running_loop().create_task(self._read())
        try:
            await asyncio.wait([reader])
        finally:
            reader.cancel()  # this handler was cancelled (the server is stopping)
        if self._closing is not None:
            code, reason = self._closing
            await self.ws.close(code=code, message=reason)
        if not reader.cancelled():
            reader.result()  # a failure in handling a frame is this handler's

    async def _read(self) -> None:
        while self._closing is None:
            self._idle = True
            try:
                msg = await self.ws.receive()
            finally:
                self._idle = False
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT) and len(msg.data) > MAX_FRAME:
                self.error(f"frame of {len(msg.data)} bytes refused (at most {MAX_FRAME})")
                self._close_with(1009, "frame too large")
            elif msg.type == WSMsgType.BINARY:
                await self.keystrokes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await self.control(msg.data)
            else:  # the client closed (aiohttp answered it) or the connection broke
                return

    async def close(self) -> None:
        # An action already started (a REISUB sequence, say) runs to its end and is audited even
        # when the client goes away: stopping half-way leaves the target half-handled (R,E,I sent,
        # B never). It is bounded (bridge.console.actions), stops when its credential ends, and
        # an admin can cancel it or pre-empt it with NMI/reset/power.
        for task in self.tasks:
            _detached.add(task)
            task.add_done_callback(_detached.discard)
        await self.port.detach(self.att)


async def console(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    identity = authorise(request, Permission.READ, name)
    if not same_origin(request) and request.headers.get("Origin") is not None:
        raise api_error(web.HTTPForbidden, "websocket Origin is not this bridge")
    state = request.app[STATE]
    port = state.ports[name]
    try:
        port.check_enabled()  # before the upgrade, so the refusal carries its reason
    except PortError as exc:
        raise port_error(exc) from None
    mode = request.query.get("mode", "rw" if allowed(identity, Permission.WRITE, name) else "ro")
    if mode not in ("ro", "rw"):
        raise api_error(web.HTTPBadRequest, "mode must be ro or rw")
    takeover = request.query.get("takeover", "0") in ("1", "true", "yes")
    start = _start(request, port)
    if len(state.consoles.of(user=identity.user)) >= state.config.server.max_connections_per_user:
        raise api_error(web.HTTPTooManyRequests, "too many console connections for this user")

    # aiohttp drops a connection abruptly above max_msg_size; up to twice the cap we refuse a
    # frame politely (error message + close 1009 with a reason).
    ws = web.WebSocketResponse(
        compress=False, max_msg_size=2 * MAX_FRAME, heartbeat=30.0, timeout=CLOSE_WAIT
    )
    await ws.prepare(request)
    viewer = WsViewer(request)
    may_write = allowed(identity, Permission.WRITE, name)
    try:
        att = port.attach(
            viewer,
            identity.user,
            peer_of(request),
            mode if may_write else "ro",
            takeover and may_write,
            start,
            privileged=may_write,  # may use the connections kept free of viewers
        )
    except PortError as exc:
        await ws.close(code=1013, message=str(exc).encode()[:120])
        return ws
    session = ConsoleSession(state, port, identity, ws, att, viewer)
    state.consoles.add(session)
    viewer.send_message(
        {
            "type": "hello",
            "port": name,
            "offset": start,
            "from": start,
            "mode": port.mode_of(att),
            "user": identity.user,
            "role": identity.role,
            **{k: v for k, v in port.status().items() if k != "offset"},
        }
    )
    if mode == "rw" and not may_write:
        session.error("your role may only read this port; connected read-only")
    try:
        await session.run()
    finally:
        state.consoles.remove(session)
        try:
            await session.close()
        finally:
            session.over.set()
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/ports/{name}/console", console)
