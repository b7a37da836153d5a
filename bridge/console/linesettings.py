"""The serial line settings of one port while a client has changed them, and their way back.

A client (an RFC 2217 client, say) may change the speed, framing and flow control of the port's
UART, and set its DTR and RTS outputs. Such a change applies to the device through the hardware
boundary (`ConsoleTransport.configure`) for as long as that client stays attached: when it
leaves, the configured settings come back; when the device is reopened meanwhile (unplugged and
plugged again), the change is applied again. A transport without a serial line (telnet, virtual)
refuses with UnsupportedAction, and the settings in force stay what they were.

Only the lease holder may change them, and a change waits for no action: like an action it is
refused (ActionBusy) while a BREAK, SysRq or power action runs (bridge.console.actions' guard).
Front doors call `port.line.change` / `set_lines`; this module keeps what is in force and who
changed it, and reports each change through the hub's `announce` (an event marker, an audit
record and a status message to every client).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from bridge.config import PortConfig
from bridge.console.errors import NotWriter, PortOffline
from bridge.console.lease import Attachment
from bridge.hw.interfaces import (
    ActionResult,
    ConsoleTransport,
    LineSettings,
    ModemState,
    UnsupportedAction,
)

log = logging.getLogger(__name__)

Announce = Callable[[str, dict[str, Any]], None]


class LineTarget(Protocol):
    """What line control needs of the hub: its name, config, device and lease holder now."""

    @property
    def name(self) -> str: ...

    @property
    def cfg(self) -> PortConfig: ...

    @property
    def transport(self) -> ConsoleTransport | None: ...

    @property
    def writer(self) -> Attachment | None: ...


class LineControl:
    """What one port's serial line is set to, and which client changed it."""

    def __init__(
        self,
        target: LineTarget,
        exclusive: Callable[[], AbstractAsyncContextManager[None]],
        announce: Announce,
    ) -> None:
        self._target = target
        self._exclusive = exclusive
        self._announce = announce
        self.configured = LineSettings.of(target.cfg)
        self.settings = self.configured
        self.dtr: bool | None = None  # as a client last set it; None: as the device opened
        self.rts: bool | None = None
        self._owner: Attachment | None = None  # whose change is in force

    def _writer_transport(self, att: Attachment, what: str) -> ConsoleTransport:
        if self._target.writer is not att:
            raise NotWriter(f"read-only: only the lease holder may {what}")
        transport = self._target.transport
        if transport is None:
            raise PortOffline(f"port {self._target.name} is offline")
        return transport

    def reconfigured(self, cfg: PortConfig) -> None:
        """The port's config changed (a reload): the device is reopened with the new settings,
        so any client change is forgotten."""
        self.configured = self.settings = LineSettings.of(cfg)
        self.dtr = self.rts = None
        self._owner = None

    async def change(self, att: Attachment, settings: LineSettings) -> LineSettings:
        """Apply `settings` for the writer `att` until it leaves; returns what is in force.
        Raises NotWriter, PortOffline, ActionBusy, UnsupportedAction (no serial line) or
        ValueError (the device refused; nothing changed)."""
        if settings == self.settings:
            return settings
        transport = self._writer_transport(att, "change the line settings")
        async with self._exclusive():
            await transport.configure(settings=settings)
        self.settings = settings
        self._owner = att
        self._announce("line-settings", {"user": att.user, "line": str(settings)})
        return settings

    async def set_lines(
        self, att: Attachment, dtr: bool | None = None, rts: bool | None = None
    ) -> ActionResult:
        """Set DTR and/or RTS for the writer `att`: an action (one at a time, announced)."""
        transport = self._writer_transport(att, "set DTR/RTS")
        async with self._exclusive():
            await transport.configure(dtr=dtr, rts=rts)
        self.dtr = self.dtr if dtr is None else dtr
        self.rts = self.rts if rts is None else rts
        self._owner = self._owner or att
        fields = {k: v for k, v in (("dtr", dtr), ("rts", rts)) if v is not None}
        self._announce("control-lines", {"user": att.user, **fields})
        return {"port": self._target.name, "user": att.user, "time": time.time(),
                "action": "control-lines", **fields}  # fmt: skip

    def modem_state(self) -> ModemState | None:
        """The device's CTS/DSR/RI/CD now; None when offline or not readable."""
        transport = self._target.transport
        return transport.modem_state() if transport is not None else None

    async def left(self, att: Attachment) -> None:
        """`att` detached: if its change is in force, the configured settings come back (and
        DTR/RTS asserted, as the device was opened)."""
        if self._owner is not att:
            return
        restore_lines = self.dtr is False or self.rts is False
        self._owner, self.dtr, self.rts = None, None, None
        settings = self.configured if self.settings != self.configured else None
        self.settings = self.configured
        transport = self._target.transport
        if transport is not None and (settings is not None or restore_lines):
            try:
                await transport.configure(
                    settings=settings,
                    dtr=True if restore_lines else None,
                    rts=True if restore_lines else None,
                )
            except (UnsupportedAction, ValueError, OSError) as exc:
                log.warning("port %s: restoring the line failed: %s", self._target.name, exc)
        if settings is not None:
            self._announce("line-restored", {"user": att.user, "line": str(self.configured)})

    async def reopened(self, transport: ConsoleTransport) -> None:
        """The device was opened again (with the configured settings): apply the change in
        force once more, or drop it when the new device refuses it."""
        if self._owner is None:
            return
        try:
            await transport.configure(
                settings=self.settings if self.settings != self.configured else None,
                dtr=self.dtr,
                rts=self.rts,
            )
        except (UnsupportedAction, ValueError, OSError) as exc:
            log.warning("port %s: re-applying %s failed: %s", self._target.name, self.settings, exc)
            self._owner, self.dtr, self.rts = None, None, None
            self.settings = self.configured
            self._announce("line-restored", {"user": "", "line": str(self.configured)})
