"""The console history API: `GET /api/ports/{name}/log` and the admins' `GET /api/audit`.

`/log?from=OFFSET&since=ISO8601&format=text|raw|jsonl&follow=0|1&strip=0|1` streams (chunked)
from the port's history; `from=-N` is the last N bytes held (a hole, such as the
offsets skipped after a crash, counts for nothing); an offset older than what is held starts at
the oldest byte held, one in a hole after it, and `X-Log-From` says where it really started. A
hole crossed while reading is a `gap` line in `jsonl` and a notice line in `text` (`raw` carries
the bytes only). `text` neutralises control characters (bridge.history.textexport; `strip=1`
drops them and escape sequences instead, for reading), `raw` is for replay, `jsonl` interleaves
event markers (online/offline, BREAK/SysRq/NMI/power and who did them) with the output, by
offset (`events=1`: the markers only, what the console page's timeline and `log --events` show).
`follow=1` keeps the response open like `tail -f`; such a stream is an open console of
its user (bridge.access.consoles): it counts toward `server.max_connections_per_user` and ends,
like a websocket, within a second of logout, a password change, a token's revocation or the
user's deletion.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from bridge.access.policy import Identity, Permission
from bridge.console.port import Port
from bridge.history.textexport import TextExporter
from bridge.web.authn import authorise
from bridge.web.state import STATE, api_error

PIECE = 256 * 1024
FOLLOW_POLL = 15.0
END_GRACE = 1.0  # an ended stream whose client does not read is cut off after this
FORMATS = {
    "text": "text/plain; charset=utf-8",
    "raw": "application/octet-stream",
    "jsonl": "application/x-ndjson",
}


def parse_time(value: str) -> float:
    """ISO-8601 (`2026-11-23T05:00:00Z`, with or without offset; naive means UTC) -> epoch."""
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise api_error(web.HTTPBadRequest, f"since: {value!r} is not an ISO-8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds")


def _start_offset(request: web.Request, port: Port) -> int:
    since, raw_from = request.query.get("since"), request.query.get("from")
    if since is not None and raw_from is not None:
        raise api_error(web.HTTPBadRequest, "give from or since, not both")
    if since is not None:
        when = parse_time(since)
        if port.ringlog is None:
            return port.resolve_from(port.oldest_offset)
        return port.resolve_from(port.ringlog.offset_at(when))
    if raw_from is not None:
        try:
            return port.resolve_from(int(raw_from))
        except ValueError:
            raise api_error(web.HTTPBadRequest, "from must be an integer offset") from None
    return port.resolve_from(port.oldest_offset)


def gap_notice(start: int, end: int) -> str:
    """The line `format=text` shows where offsets [start, end) are not held."""
    return f"\n[serial-bridge: output missing here: offsets {start}..{end} are not held]\n"


def _jsonl_lines(
    port: Port, start: int, emitted: set[tuple[int, float, str]], events: bool = False
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(cursor after the line, line) for data and markers from `start` on, in offset order: from
    the ring log if there is one (markers included; `emitted` remembers markers already sent so a
    following reader sees each once), else plain data from the scrollback. With `events`, data
    is skipped (its line is None): only the markers and gaps (the timeline)."""
    exporter = TextExporter()  # one for the stream: a character split across records decodes
    if port.ringlog is not None:
        cursor = start
        for rec in port.ringlog.records(start, None):
            if rec.offset > cursor:  # a hole: never recorded (a crash), or no longer held
                yield rec.offset, {"offset": cursor, "event": "gap", "to": rec.offset}
                cursor = rec.offset
            if rec.marker is not None:
                key = (rec.offset, rec.time, json.dumps(rec.marker, sort_keys=True))
                if key in emitted:
                    continue
                emitted.add(key)
                yield cursor, {"offset": rec.offset, "time": _iso(rec.time), **rec.marker}
            elif events:
                cursor = rec.offset + len(rec.data)
                yield cursor, None
            else:
                text = exporter.feed(rec.data)
                cursor = rec.offset + len(rec.data)
                yield cursor, {"offset": rec.offset, "time": _iso(rec.time), "text": text}
        return
    if events:
        return  # no ring log: no markers are kept
    cursor = start
    while cursor < port.offset:
        got_from, data = port.read(cursor, PIECE)
        if not data:
            return
        cursor = got_from + len(data)
        yield cursor, {"offset": got_from, "text": exporter.feed(data)}


class LogFollower:
    """A `follow=1` stream as an open console (bridge.access.consoles.OpenConsole)."""

    last_input = 0.0  # reading is not use: only keystrokes keep a login session alive

    def __init__(self, identity: Identity, port_name: str, request: web.Request) -> None:
        self.identity, self.port_name, self.request = identity, port_name, request
        self.ending = asyncio.Event()
        self.finished = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self.finished.is_set()

    async def end(self, reason: str, going_away: bool = False) -> None:
        """Stop the stream (it ends its response at the next wake-up, at once when idle); a
        client that does not read holds a write, and is cut off after END_GRACE."""
        self.ending.set()
        try:
            await asyncio.wait_for(self.finished.wait(), END_GRACE)
        except TimeoutError:
            if self.request.transport is not None:
                self.request.transport.abort()

    async def more_output(self, port: Port, cursor: int) -> bool:
        """Wait for output past `cursor`: True when there is some, False when the stream must
        end (ended, or its client went away)."""
        ending = asyncio.ensure_future(self.ending.wait())
        try:
            while not self.ending.is_set():
                output = asyncio.ensure_future(port.wait_for_output(cursor, FOLLOW_POLL))
                await asyncio.wait({output, ending}, return_when=asyncio.FIRST_COMPLETED)
                if not output.done():
                    output.cancel()
                elif output.result():
                    return True
                transport = self.request.transport
                if transport is None or transport.is_closing():
                    return False
            return False
        finally:
            ending.cancel()


async def port_log(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    identity = authorise(request, Permission.READ, name)
    state = request.app[STATE]
    port = state.ports[name]
    fmt = request.query.get("format", "text")
    if fmt not in FORMATS:
        raise api_error(web.HTTPBadRequest, "format must be text, raw or jsonl")
    follow = request.query.get("follow", "0") in ("1", "true", "yes")
    strip = request.query.get("strip", "0") in ("1", "true", "yes")
    if strip and fmt != "text":
        raise api_error(web.HTTPBadRequest, "strip applies to format=text only")
    events = request.query.get("events", "0") in ("1", "true", "yes")
    if events and fmt != "jsonl":
        raise api_error(web.HTTPBadRequest, "events applies to format=jsonl only")
    start = _start_offset(request, port)
    if not follow:
        return await _stream(request, port, fmt, strip, start, None, events)
    if len(state.consoles.of(user=identity.user)) >= state.config.server.max_connections_per_user:
        raise api_error(web.HTTPTooManyRequests, "too many console connections for this user")
    follower = LogFollower(identity, name, request)
    state.consoles.add(follower)
    try:
        return await _stream(request, port, fmt, strip, start, follower, events)
    finally:
        state.consoles.remove(follower)
        follower.finished.set()


async def _stream(
    request: web.Request,
    port: Port,
    fmt: str,
    strip: bool,
    start: int,
    follower: LogFollower | None,
    events: bool = False,
) -> web.StreamResponse:
    """Write the log from `start`; with a `follower`, keep writing new output until it ends."""
    name = port.name
    response = web.StreamResponse(
        headers={
            "Content-Type": FORMATS[fmt],
            "X-Log-From": str(start),
            "Cache-Control": "no-store",
        }
    )
    if fmt != "jsonl":
        response.headers["Content-Disposition"] = f'inline; filename="{name}.{fmt}.log"'
    response.enable_chunked_encoding()
    await response.prepare(request)
    exporter = TextExporter(strip)
    emitted: set[tuple[int, float, str]] = set()
    cursor = start
    while True:
        end = port.offset
        if fmt == "jsonl":
            for cursor, line in _jsonl_lines(port, cursor, emitted, events):  # noqa: B007, B020
                if line is not None:
                    await response.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            emitted = {m for m in emitted if m[0] >= cursor}
        else:
            while cursor < end:
                got_from, data = port.read(cursor, min(PIECE, end - cursor))
                if not data:
                    break
                if got_from > cursor and fmt == "text":
                    notice = exporter.finish() + gap_notice(cursor, got_from)
                    await response.write(notice.encode())
                    exporter = TextExporter(strip)
                cursor = got_from + len(data)
                await response.write(exporter.feed(data).encode() if fmt == "text" else data)
        if follower is None or not await follower.more_output(port, cursor):
            break
    if request.transport is None or request.transport.is_closing():
        return response  # the client went away (or was cut off)
    if fmt == "text":
        await response.write(exporter.finish().encode())
    await response.write_eof()
    return response


async def audit(request: web.Request) -> web.Response:
    authorise(request, Permission.ADMIN)
    state = request.app[STATE]
    since = request.query.get("since")
    try:
        limit = min(int(request.query.get("limit", "1000")), 10000)
    except ValueError:
        raise api_error(web.HTTPBadRequest, "limit must be an integer") from None
    query = getattr(state.audit, "query", None)
    if query is None:
        return web.json_response([])
    search = functools.partial(  # reads up to the whole rotated trail: off the event loop
        query,
        user=request.query.get("user"),
        port=request.query.get("port"),
        since=parse_time(since) if since else None,
        limit=limit,
    )
    events = await asyncio.get_running_loop().run_in_executor(None, search)
    return web.json_response(events)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/ports/{name}/log", port_log)
    app.router.add_get("/api/audit", audit)
