"""The composition point of the hardware boundary: picks a transport and lines for a port's config.

`telnet://host:port` -> TelnetTransport; `virtual:shell` -> the demo's shell on a pty; anything
else (a device path, `rfc2217://`, `socket://`) -> UartTransport through pyserial.
"""

from __future__ import annotations

from bridge.config import GpioConfig, PortConfig
from bridge.hw.interfaces import ActionResult, ConsoleTransport, ControlLines, UnsupportedAction

VIRTUAL_DEVICE = "virtual:shell"


def make_transport(cfg: PortConfig) -> ConsoleTransport:
    """A new, unopened transport for the port's device."""
    if cfg.device.startswith("telnet://"):
        from bridge.hw.telnet import TelnetTransport, parse_telnet_url

        host, port = parse_telnet_url(cfg.device)
        return TelnetTransport(host, port, description=cfg.device)
    if cfg.device == VIRTUAL_DEVICE:
        from bridge.hw.virtual import VirtualShellTransport

        return VirtualShellTransport(cfg.name)
    from bridge.hw.uart import UartTransport

    return UartTransport(cfg)


class NoLines:
    """A port without control lines: every action is unsupported, power state unknown."""

    def supported(self) -> frozenset[str]:
        return frozenset()

    async def nmi(self) -> ActionResult:
        raise UnsupportedAction("this port has no NMI line configured")

    async def reset(self) -> ActionResult:
        raise UnsupportedAction("this port has no reset line configured")

    async def power(self, action: str) -> ActionResult:
        raise UnsupportedAction("this port has no power line configured")

    def power_state(self) -> str:
        return "unknown"

    async def close(self) -> None:
        return None


def make_lines(cfg: PortConfig, gpio: GpioConfig) -> ControlLines:
    """The port's control lines, created inactive. Raises a setup error naming port and line."""
    lines = cfg.lines
    if lines.qmp:
        from bridge.hw.qmp import QmpLines

        return QmpLines(lines.qmp, port=cfg.name)
    if lines.configured:
        from bridge.hw.lines import GpioLines

        return GpioLines.create(cfg.name, lines, gpio.pin_factory)
    return NoLines()
