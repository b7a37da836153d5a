"""The small interfaces every piece of hardware sits behind, so tests and `demo` swap in fakes."""

from __future__ import annotations

from typing import Any, Protocol


class DeviceUnavailable(OSError):
    """The console device cannot be opened now (missing, busy, permission); the hub retries."""


class UnsupportedAction(Exception):
    """This port's lines cannot do the asked action (say NMI on a port without an NMI line)."""


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
        equivalent: telnet IAC BRK, QMP chardev-send-break)."""

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
