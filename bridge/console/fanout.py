"""Fan-out of a port's output to its clients: where bytes go from the hub to every connection.

Each client is a `Subscriber` with a cursor (the offset of the next byte it gets). While it keeps
up it is *live*: every chunk is handed to its `Outlet` as soon as it is read, and all live clients
share one encoded frame per chunk (`Chunk.encoded`), so per-client work is O(1) per chunk. When a
client's outlet holds more than its budget (it is not reading), it leaves the live set and a small
task catches it up from the hub's history (bridge.console.replay) as fast as it drains; if
the bytes it missed are no longer held, it gets a `gap(from, to)` and continues from the oldest
byte still held. The reader and the other clients never wait for a slow one.

A client's budget is the port's `client_buffer` (1 MiB), but no more than an equal share of
PORT_BUFFER (64 MiB) among the port's clients (`Budget`; at least MIN_BUDGET): with 256 clients
that stopped reading, each holds at most 256 KiB of queued output, so together they cannot hold
much more than PORT_BUFFER of the daemon's memory. A smaller budget loses nothing: a client over
it is caught up from the history.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

CATCH_UP_PIECE = 256 * 1024
PORT_BUFFER = 64 * 1024 * 1024  # queued output of all a port's clients, about (see Budget)
MIN_BUDGET = 64 * 1024


class Budget:
    """How much output one of a port's clients may have queued before it is caught up from
    history instead: `per_client`, or an equal share of PORT_BUFFER if that is less."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self.clients = 0  # subscribers counting on it

    def limit(self) -> int:
        return min(self.per_client, max(MIN_BUDGET, PORT_BUFFER // max(1, self.clients)))


class Chunk:
    """One read from the device: its bytes, its first offset, and a shared encoding cache."""

    __slots__ = ("_encoded", "_encoder", "data", "offset")

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset
        self._encoder: Callable[[bytes], bytes] | None = None
        self._encoded = b""

    def encoded(self, encoder: Callable[[bytes], bytes]) -> bytes:
        """`encoder(data)`, computed once per chunk and shared by every client using it."""
        if self._encoder is not encoder:
            self._encoder, self._encoded = encoder, encoder(self.data)
        return self._encoded


class Outlet(Protocol):
    """A client connection as the fan-out sees it (the websocket side implements it)."""

    def send_chunk(self, chunk: Chunk) -> None:
        """Queue live output (never blocks)."""

    def send_history(self, offset: int, data: bytes) -> None:
        """Queue caught-up output starting at `offset` (never blocks)."""

    def send_gap(self, start: int, end: int) -> None:
        """Tell the client that offsets [start, end) are lost to it."""

    def backlog(self) -> int:
        """Bytes queued for this client and not yet handed to the kernel."""

    async def drained(self) -> None:
        """Return when the backlog is low enough to queue more."""


class History(Protocol):
    """Where a lagging or resuming client reads missed output from (the hub)."""

    @property
    def offset(self) -> int: ...

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes]: ...


class Subscriber:
    """A client's position in the output stream; live or catching up."""

    def __init__(self, outlet: Outlet, history: History, budget: Budget | int, cursor: int) -> None:
        self.outlet = outlet
        self.history = history
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)
        self.budget.clients += 1
        self._counted = True
        self.cursor = cursor
        self.live = False
        self.gaps = 0
        self._task: asyncio.Task[None] | None = None
        if cursor >= history.offset:
            self.cursor = history.offset
            self.live = True
        else:
            self._start_catch_up()

    def on_chunk(self, chunk: Chunk) -> None:
        """Hot path: called for every chunk while live."""
        if self.outlet.backlog() > self.budget.limit():
            self.live = False
            self.cursor = chunk.offset
            self._start_catch_up()
        else:
            self.outlet.send_chunk(chunk)

    def _start_catch_up(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        while True:
            await self.outlet.drained()
            start, data = self.history.read(self.cursor, CATCH_UP_PIECE)
            if start > self.cursor:
                self.gaps += 1
                self.outlet.send_gap(self.cursor, start)
                self.cursor = start
            if not data:
                self.live = True  # no await between the last read and this: nothing is missed
                self._task = None
                return
            self.outlet.send_history(start, data)
            self.cursor = start + len(data)

    async def close(self) -> None:
        task, self._task = self._task, None
        self.live = False
        if self._counted:
            self._counted = False
            self.budget.clients -= 1
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
