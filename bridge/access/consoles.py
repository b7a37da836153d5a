"""Open consoles: every front door registers its console clients here, so a credential that ends
closes them whichever door they came through.

A console client (a websocket, an SSH session) holds the `Identity` it was granted when it
attached. `OpenConsoles.watch` runs for the daemon's lifetime and, twice a second, asks the `Gate`
whether each identity would still be granted: the login session alive (keystrokes count as use),
the token not revoked, the SSH key not removed and the CA still trusted, the user not deleted,
re-keyed or re-roled, the second factor a port requires still behind it — also when the change
was made by a `serial-bridge user|token` command in another process. A client that fails is ended
with a reason; each door says it in its own way (websocket close 1008, an SSH line and a
disconnect). Logout and reload end clients at once through `of(...)` and `end(...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

from bridge.access.gate import Gate
from bridge.access.policy import Identity

log = logging.getLogger(__name__)
CHECK_INTERVAL = 0.5


class OpenConsole(Protocol):
    """A console client as the registry sees it (bridge.web.console, bridge.ssh.session)."""

    @property
    def identity(self) -> Identity: ...

    @property
    def port_name(self) -> str: ...

    @property
    def last_input(self) -> float:
        """When its user last typed (monotonic); keystrokes keep a login session alive."""

    @property
    def closed(self) -> bool: ...

    async def end(self, reason: str, going_away: bool = False) -> None:
        """Close the client saying `reason`; `going_away`: the bridge or the port is going (not
        a credential): the client may reconnect."""


class OpenConsoles:
    """The console clients open right now, of every front door."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._clients: dict[OpenConsole, float] = {}  # client -> last input already counted
        self._ending: set[asyncio.Task[None]] = set()

    def add(self, client: OpenConsole) -> None:
        self._clients[client] = client.last_input

    def remove(self, client: OpenConsole) -> None:
        self._clients.pop(client, None)

    def __iter__(self) -> Iterator[OpenConsole]:
        return iter(list(self._clients))

    def __len__(self) -> int:
        return len(self._clients)

    def of(
        self,
        user: str | None = None,
        session_key: str | None = None,
        token_id: str | None = None,
        port: str | None = None,
    ) -> list[OpenConsole]:
        """The clients of a user / login session / token / port (any that matches)."""
        return [
            c
            for c in self._clients
            if (user is not None and c.identity.user == user)
            or (session_key is not None and c.identity.session_id == session_key)
            or (token_id is not None and c.identity.token_id == token_id)
            or (port is not None and c.port_name == port)
        ]

    async def end(self, victims: list[OpenConsole], reason: str, going_away: bool = False) -> None:
        """End clients concurrently: one that never answers must not delay the others."""

        async def end_one(client: OpenConsole) -> None:
            try:
                await client.end(reason, going_away)
            except Exception:  # a client that breaks while closing is gone either way
                log.debug("ending a console client failed", exc_info=True)

        await asyncio.gather(*(end_one(c) for c in victims))

    def stale(self) -> list[OpenConsole]:
        """One pass of the watcher: drop expired login sessions, count keystrokes as session use,
        and return the open clients whose identity would no longer be granted."""
        gate = self.gate
        gate.sessions.sweep()
        users, token_ids = gate.users.users(), gate.users.token_ids()
        found = []
        for client, seen in list(self._clients.items()):
            if client.closed:
                continue
            identity = client.identity
            if identity.via == "session" and client.last_input > seen:
                self._clients[client] = client.last_input
                session = gate.sessions.by_key(identity.session_id or "")
                if session is not None:
                    gate.sessions.touch(session)
            if not gate.still_valid(identity, users, token_ids, client.port_name):
                found.append(client)
        return found

    async def watch(self, interval: float = CHECK_INTERVAL) -> None:
        """End every client whose credential ended; runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                stale = self.stale()
            except Exception:  # a torn users file must not stop the watcher
                log.exception("session check failed; retrying")
                continue
            if stale:
                task = asyncio.create_task(self.end(stale, "session ended or credentials changed"))
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)

    async def close(self, reason: str) -> None:
        """End every client (the bridge is stopping)."""
        await self.end(list(self._clients), reason, going_away=True)
        for task in list(self._ending):
            with contextlib.suppress(asyncio.CancelledError):
                await task
