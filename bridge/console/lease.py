"""The writer lease of one port: which attached client may type, and what happens when it stops.

At most one attachment holds the lease (the writer); the others only read. A client that asks for
read-write gets the lease when nobody holds it, or by taking it over. The lease ends on release,
on detach, when another client takes it over, or after `writer_idle_timeout` without keystrokes.
A running recovery playbook pins it: no take-over, no expiry, until the playbook ends.
When a writer leaves or loses the lease, the port's `on_release` bytes (say "exit\\r") are sent,
and the next writer's keystrokes wait until they are written, so the logout reaches the target
first.

The lease also keeps `reserved_clients` of a port's `max_clients` for clients that may write
(operators and admins), so read-only viewers filling the port cannot lock them out.

The lease never touches the device: the hub hands it the function that writes `on_release`
(bridge.console.actions decides when such a write may go out), and reports what the lease did
(events, status broadcasts) itself. Every front door goes through the same `Lease` via the hub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.config import PortConfig
from bridge.console.errors import NotWriter, TooManyClients
from bridge.console.fanout import Outlet, Subscriber


class Viewer(Outlet, Protocol):
    """A connected client as the hub sees it: an outlet for output plus control messages."""

    def send_message(self, message: dict[str, Any]) -> None: ...


@dataclass(eq=False)
class Attachment:
    """One client attached to a port."""

    id: int
    user: str
    peer: str
    viewer: Viewer
    subscriber: Subscriber
    wants_write: bool
    last_input: float = field(default_factory=time.monotonic)


class Lease:
    """Who may type on one port, and the `on_release` bytes sent when that changes."""

    def __init__(self, send_on_release: Callable[[bytes], Awaitable[None]]) -> None:
        self.writer: Attachment | None = None
        self.pinned: Attachment | None = None  # a running playbook (bridge.console.rescue)
        self.on_release = b""  # the hub sets it from the port's config
        self._send = send_on_release
        self._released = asyncio.Event()
        self._released.set()
        self._background: set[asyncio.Task[None]] = set()

    @staticmethod
    def admit(clients: int, cfg: PortConfig, privileged: bool) -> None:
        """Raise TooManyClients unless one more client fits: read-only clients may fill
        `max_clients` only up to the `reserved_clients` kept for those who may write (at most
        max_clients - 1 are kept), so viewers cannot lock operators and admins out."""
        reserve = min(cfg.reserved_clients, cfg.max_clients - 1)
        limit = cfg.max_clients if privileged else cfg.max_clients - reserve
        if clients >= limit:
            kept = f" ({reserve} kept for operators and admins)" if reserve else ""
            raise TooManyClients(f"port {cfg.name} has {clients} clients already{kept}")

    def mode_of(self, att: Attachment) -> str:
        return "rw" if self.writer is att else "ro"

    def check(self, att: Attachment) -> None:
        """Raise NotWriter unless `att` holds the lease."""
        if self.writer is not att:
            raise NotWriter(
                "read-only: another client holds the write lease"
                if self.writer
                else "read-only: take over to type"
            )

    def grant(self, att: Attachment) -> Attachment | None:
        """Give `att` the lease; returns the writer it was taken from, if any. NotWriter while
        the lease is pinned to another (a playbook runs)."""
        if self.pinned is not None and att is not self.pinned:
            raise NotWriter("a recovery playbook holds the write lease; cancel it first")
        old = self.writer
        self.writer = att
        att.last_input = time.monotonic()
        if old is not None and old is not att:
            self._lost()
            return old
        return None

    def release(self, att: Attachment) -> bool:
        """`att` gives the lease up (release or detach); False if it did not hold it."""
        if self.writer is not att:
            return False
        self.writer = None
        self._lost()
        return True

    def clear(self) -> None:
        """The port closes: nobody writes, and nothing is sent."""
        self.writer = None

    async def expire_idle(self, idle: float, on_expired: Callable[[Attachment], None]) -> None:
        """Run for the port's lifetime: a writer without keystrokes for `idle` seconds loses
        the lease (`on_release` is sent) and `on_expired` is told who it was."""
        while True:
            await asyncio.sleep(min(idle / 4, 5.0))
            att = self.writer
            if (
                att is not None
                and att is not self.pinned
                and time.monotonic() - att.last_input > idle
            ):
                self.writer = None
                self._lost()
                on_expired(att)

    async def wait_released(self) -> None:
        """Wait until a pending `on_release` is written (keystrokes of the next writer do)."""
        await self._released.wait()

    def _lost(self) -> None:
        """A writer left or lost the lease: send `on_release` in the background."""
        if not self.on_release:
            return
        self._released.clear()
        task = asyncio.get_running_loop().create_task(self._send_on_release(self.on_release))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_on_release(self, data: bytes) -> None:
        try:
            await self._send(data)
        finally:
            self._released.set()
