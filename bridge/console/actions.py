"""Actions on one target: BREAK, SysRq (BREAK + key) and NMI/reset/power through control lines.

Owns the one-at-a-time rule: a second action while one runs is refused (ActionBusy, 409) instead
of queued, like a busy hardware button; a power status query neither waits for nor blocks one.
During a BREAK+key step keystrokes wait (`quiet`), so a typed byte can never land between the
BREAK and its key and become the SysRq key itself. Each action leaves a marker in the ring log;
the front door that asked audits it, since it knows the peer and the outcome.

Keys and intervals arrive validated (bridge.console.sysrq); the timing of BREAK and keys is here,
the electrical side in bridge.hw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from bridge.config import PortConfig
from bridge.console.errors import ActionBusy, LinesFailed, PortDisabled, PortOffline
from bridge.hw.interfaces import ActionResult, ConsoleTransport, ControlLines, UnsupportedAction

log = logging.getLogger(__name__)

Marker = Callable[[str, dict[str, Any]], None]
RESULTS: dict[type[Exception], str] = {
    ActionBusy: "busy",
    PortOffline: "offline",
    PortDisabled: "disabled",
    UnsupportedAction: "unsupported",
    LinesFailed: "failed",
}


def result_of(exc: Exception) -> str:
    """How an action that raised `exc` is counted: busy, offline, unsupported, failed or error."""
    return next((r for cls, r in RESULTS.items() if isinstance(exc, cls)), "error")


class ActionTarget(Protocol):
    """What actions need of the hub: its name and config, and the device as it is now."""

    @property
    def name(self) -> str: ...

    @property
    def cfg(self) -> PortConfig: ...

    @property
    def lines(self) -> ControlLines: ...

    @property
    def transport(self) -> ConsoleTransport | None: ...

    def check_enabled(self) -> None:
        """Raise PortDisabled when the administrator disabled the port."""


class Actions:
    """The actions of one port, one at a time."""

    def __init__(self, target: ActionTarget, mark: Marker) -> None:
        self._target = target
        self._mark = mark  # an event marker in the port's ring log
        self._lock = asyncio.Lock()
        self._quiet = asyncio.Event()
        self._quiet.set()
        # for the metrics: (action, result) -> n, and BREAK conditions sent (SysRq's included)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.breaks = 0

    @contextlib.contextmanager
    def _counted(self, action: str) -> Iterator[None]:
        """Count the action by its result; a disabled port refuses it here, first."""
        try:
            self._target.check_enabled()
            yield
        except Exception as exc:
            self.counts[action, result_of(exc)] += 1
            raise
        self.counts[action, "ok"] += 1

    async def quiet(self) -> None:
        """Wait while a BREAK+key step is in progress (keystrokes do, before they are written)."""
        await self._quiet.wait()

    @contextlib.asynccontextmanager
    async def between_actions(self) -> AsyncIterator[None]:
        """Wait for a running action to end and hold off new ones meanwhile (`on_release`: never
        inside a BREAK+key window, where the "e" of "exit" would be SysRq-e)."""
        async with self._lock:
            yield

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The one-at-a-time guard for other operations that must not overlap an action (a
        change of line settings or DTR/RTS): ActionBusy while one runs."""
        return self._exclusive()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        if self._lock.locked():
            raise ActionBusy(f"port {self._target.name} is busy with another action; try again")
        async with self._lock:
            yield

    async def _break_then(self, key: bytes) -> None:
        name, transport = self._target.name, self._target.transport
        if transport is None:
            raise PortOffline(f"port {name} is offline")
        self._quiet.clear()
        try:
            await transport.drain()
            self.breaks += 1
            await transport.send_break(self._target.cfg.break_duration)
            if key:
                await transport.write(key)
        except OSError as exc:  # DeviceUnavailable, ConnectionResetError: the device went away
            raise PortOffline(f"port {name}: BREAK failed: {exc}") from exc
        finally:
            self._quiet.set()

    async def send_break(self, user: str) -> ActionResult:
        with self._counted("break"):
            async with self._exclusive():
                await self._break_then(b"")
        result = {"action": "break", "duration_ms": round(self._target.cfg.break_duration * 1000)}
        self._mark("break", {"user": user})
        return self._done(result, user)

    async def sysrq(self, keys: str, interval: float, user: str) -> ActionResult:
        """BREAK + key for each key (already validated), `interval` seconds apart."""
        with self._counted("sysrq"):
            async with self._exclusive():
                for i, key in enumerate(keys):
                    if i:
                        await asyncio.sleep(interval)
                    await self._break_then(key.encode("ascii"))
        self._mark("sysrq", {"user": user, "keys": keys})
        return self._done(
            {
                "action": "sysrq",
                "keys": keys,
                "interval_ms": round(interval * 1000),
                "break_ms": round(self._target.cfg.break_duration * 1000),
            },
            user,
        )

    async def line_action(self, action: str, user: str) -> ActionResult:
        """nmi | reset | power:on|off|force-off|cycle|status through the port's control lines.
        A status query does not wait for (or block) a running action."""
        lines = self._target.lines
        if action == "power:status":
            self._target.check_enabled()
            if "status" not in lines.supported():
                return self._done({"action": "power", "power": lines.power_state()}, user)
            return self._done(await self._call_lines(action), user)
        with self._counted(action.replace(":", "-")):
            async with self._exclusive():
                result = await self._call_lines(action)
        self._mark(action.split(":")[0], {"user": user, **result})
        return self._done(result, user)

    async def _call_lines(self, action: str) -> ActionResult:
        lines, name = self._target.lines, self._target.name
        try:
            if action == "nmi":
                return await lines.nmi()
            if action == "reset":
                return await lines.reset()
            return await lines.power(action.removeprefix("power:"))
        except UnsupportedAction:
            raise
        except Exception as exc:
            log.exception("port %s: %s failed", name, action)
            raise LinesFailed(f"port {name}: {action} failed: {exc}") from exc

    def _done(self, result: ActionResult, user: str) -> ActionResult:
        return {"port": self._target.name, "user": user, "time": time.time(), **result}
