"""The small interfaces every piece of hardware sits behind, so tests and `demo` swap in fakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bridge.config import Framing, PortConfig


class DeviceUnavailable(OSError):
    """The console device cannot be opened now (missing, busy, permission); the hub retries."""


class UnsupportedAction(Exception):
    """This port's lines cannot do the asked action (say NMI on a port without an NMI line)."""


@dataclass(frozen=True)
class LineSettings:
    """What a serial line is set to: speed, character framing and flow control."""

    baud: int
    framing: Framing
    flow: str  # "none" | "rtscts" | "xonxoff"

    @classmethod
    def of(cls, cfg: PortConfig) -> LineSettings:
        """The settings a port's config asks for."""
        return cls(cfg.baud, cfg.framing, cfg.flow)

    def __str__(self) -> str:
        return f"{self.baud} {self.framing}" + ("" if self.flow == "none" else f" {self.flow}")


@dataclass(frozen=True)
class ModemState:
    """The modem status inputs of a serial line, as read now."""

    cts: bool = False
    dsr: bool = False
    ri: bool = False
    cd: bool = False


class TransportSink(Protocol):
    """Where a transport delivers what the target printed. Called from the event loop."""

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class ConsoleTransport(Protocol):
    """A target's console: bytes in and out, plus BREAK. One instance is opened at most once."""

    description: str

    async def open(self, sink: TransportSink) -> None:
        """Open the device and start delivering reads to `sink`. Raises DeviceUnavailable."""

    async def write(self, data: bytes) -> None:
        """Send bytes in order, paced at the line rate; returns once the device took them all."""

    async def drain(self) -> None:
        """Wait until earlier writes have left the bridge (best effort for network transports)."""

    async def send_break(self, duration: float) -> None:
        """Hold the line in the break condition for `duration` seconds (or the transport's
        equivalent: telnet IAC BRK, QMP chardev-send-break). Raises UnsupportedAction when the
        device turns out not to carry one (its driver refuses the request)."""

    def break_unsupported(self) -> str | None:
        """None when this open transport can send a BREAK; else why it cannot, in words for the
        user ("... is a pseudo-terminal, which cannot carry a BREAK"). The hub asks before every
        BREAK and SysRq, so they are refused instead of reaching the target as plain keys."""

    async def configure(
        self, settings: LineSettings | None = None, dtr: bool | None = None, rts: bool | None = None
    ) -> None:
        """Apply line settings and/or set the DTR and RTS outputs of the open device, after
        earlier writes have left at the old speed. Raises UnsupportedAction where the transport
        has no such thing (a telnet or virtual console), ValueError for a value the device
        refuses (then nothing changed)."""

    def modem_state(self) -> ModemState | None:
        """CTS, DSR, RI and CD as read now; None where the transport cannot read them."""

    async def close(self) -> None:
        """Stop reading and release the device. Idempotent; `connection_lost` is not called."""

    def line_errors(self) -> dict[str, int] | None:
        """Error counters the device's driver keeps ({"overrun": n, "framing": n, "parity": n,
        "break": n, "buffer_overrun": n}, since the device appeared), or None when it keeps none
        (a pty, a network transport)."""


ActionResult = dict[str, Any]
"""What an action did, as answered to the client: {"action": "nmi", "pulse_ms": 200, ...}."""

POWER_ACTIONS = ("on", "off", "force-off", "reset", "cycle", "status")


class ControlLines(Protocol):
    """A port's NMI / reset / power lines and power-sense input. Lines are inactive unless an
    action is running, and are returned inactive by `close()` and on any exception."""

    def supported(self) -> frozenset[str]:
        """The actions this port can do: a subset of {"nmi", "reset", "on", "off", "force-off",
        "cycle", "status"}."""

    async def nmi(self) -> ActionResult: ...

    async def reset(self) -> ActionResult: ...

    async def power(self, action: str) -> ActionResult:
        """on | off | force-off | cycle | status. Raises UnsupportedAction where it cannot."""

    def power_state(self) -> str:
        """ "on", "off" or "unknown" (no sense line)."""

    async def close(self) -> None:
        """Release every line in its inactive state."""
