"""Recovery playbooks over HTTP: list them, run one on a port, cancel it. Admins only (a playbook
resets machines).

- `GET /api/playbooks`: `[{name, description, params: [{name, default, description, choices?}],
  steps: [title...], source}]`, the shipped ones and the site's (`[playbooks] dir`).
- `POST /api/ports/{name}/rescue` `{"playbook": NAME, "args": {PARAM: VALUE}}`: runs it (the
  runner: bridge.console.rescue) and answers a stream of JSON lines (`application/x-ndjson`), one
  `{"type":"step",...}` per step as it starts and a last `{"type":"result","result":"ok"|
  "failed"|"cancelled",...}`. The playbook goes on if the request goes away; everyone attached to
  the port sees its progress in `status` messages.
- `POST /api/ports/{name}/rescue/cancel`: stops it (answers what was cancelled).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from bridge.access.policy import Permission
from bridge.console.errors import PortError
from bridge.console.playbook import available
from bridge.web.api import _json_body as json_body
from bridge.web.authn import authorise, peer_of
from bridge.web.state import STATE, api_error, port_error


async def list_playbooks(request: web.Request) -> web.Response:
    authorise(request, Permission.ADMIN)
    books = available(request.app[STATE].config.playbooks_dir)
    return web.json_response([b.summary() for b in books.values()])


async def run(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    identity = authorise(request, Permission.ADMIN, name)
    state = request.app[STATE]
    body = await json_body(request)
    book_name, args = body.get("playbook"), body.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(v, str | int) for v in args.values()):
        raise api_error(web.HTTPBadRequest, "args must be an object of strings")
    books = available(state.config.playbooks_dir)
    book = books.get(book_name) if isinstance(book_name, str) else None
    if book is None:
        raise api_error(web.HTTPBadRequest, "playbook: no such playbook (GET /api/playbooks)")
    port = state.ports[name]
    try:
        running = port.rescue.start(
            book, {str(k): str(v) for k, v in args.items()}, identity.user, peer_of(request)
        )
    except PortError as exc:
        raise port_error(exc) from None
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    running.listeners.append(queue.put_nowait)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        while True:
            message = await queue.get()
            await response.write(json.dumps(message, ensure_ascii=False).encode() + b"\n")
            if message["type"] == "result":
                break
        await response.write_eof()
    finally:
        running.listeners.remove(queue.put_nowait)
    return response


async def cancel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    identity = authorise(request, Permission.ADMIN, name)
    try:
        result = request.app[STATE].ports[name].rescue.cancel(identity.user, any_user=True)
    except PortError as exc:
        raise port_error(exc) from None
    return web.json_response(result)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/playbooks", list_playbooks)
    app.router.add_post("/api/ports/{name}/rescue", run)
    app.router.add_post("/api/ports/{name}/rescue/cancel", cancel)
