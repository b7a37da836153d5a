"""Network serial endpoints over telnet (`telnet://host:port`): ser2net, terminal servers, QEMU.

Owns `TelnetTransport` (a `ConsoleTransport`), the client's side of the telnet protocol
(`TelnetParser`: IAC sequences removed from the byte stream, option negotiation answered, on the
shared framing of bridge.common.telnet) and `parse_telnet_url`.

Negotiation policy: we offer and accept BINARY and SUPPRESS-GO-AHEAD in both directions and let
the server ECHO; everything else is refused. Nothing ever waits for negotiation, so a server that
never negotiates (or a plain TCP port) works too. BREAK is telnet `IAC BRK`: a ser2net port or
QEMU's telnet chardev turns it into a real break condition on the target's UART.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable

from bridge.common import telnet
from bridge.hw.interfaces import (
    DeviceUnavailable,
    LineSettings,
    ModemState,
    TransportSink,
    UnsupportedAction,
)

OFFERED = (telnet.BINARY, telnet.SGA)
"""What we offer at the start, both ways (WILL and DO)."""
WE_DO = frozenset({telnet.BINARY, telnet.SGA})
"""Options we perform when asked (answer DO with WILL)."""
THEY_MAY = frozenset({telnet.BINARY, telnet.SGA, telnet.ECHO})
"""Options we let the server perform (answer WILL with DO)."""

_HIGH_WATER = 64 * 1024


def parse_telnet_url(url: str) -> tuple[str, int]:
    """`telnet://host:port` or `telnet://[::1]:port` -> (host, port). Raises ValueError."""
    m = re.fullmatch(r"telnet://(?:\[([0-9A-Fa-f:.]+)\]|([^:/\[\]\s]+)):(\d+)/?", url.strip())
    if not m:
        raise ValueError(f"{url!r} is not a telnet URL (example: telnet://127.0.0.1:2000)")
    port = int(m.group(3))
    if not 0 < port <= 65535:
        raise ValueError(f"{url!r}: port {port} is out of range")
    return m.group(1) or m.group(2), port


class TelnetParser:
    """The client's side of a telnet stream; keeps state across chunks.

    `feed(chunk)` returns the data bytes; `reply(bytes)` is called with negotiation answers.
    Commands and subnegotiations are skipped, and so is broken framing: the server is ours."""

    def __init__(self, reply: Callable[[bytes], None]) -> None:
        self._reply = reply
        self._framing = telnet.TelnetParser(strict=False)
        self._options = telnet.Options(WE_DO, THEY_MAY)
        self.local = self._options.local  # options we perform (WILL) and their state
        self.remote = self._options.remote  # options the server performs

    def offer(self) -> bytes:
        """Our opening offers: WILL/DO BINARY and SGA."""
        return self._options.offer(OFFERED)

    def feed(self, chunk: bytes) -> bytes:
        events = self._framing.feed(chunk)
        if len(events) == 1 and isinstance(events[0], telnet.Data):
            return events[0].data  # no telnet command in this chunk: passed through untouched
        out = bytearray()
        for event in events:
            if isinstance(event, telnet.Data):
                out += event.data
            elif isinstance(event, telnet.Negotiation) and (
                answer := self._options.answer(event.verb, event.option)
            ):
                self._reply(answer)
        return bytes(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: TelnetTransport) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.owner._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(exc)

    def pause_writing(self) -> None:
        self.owner._can_write.clear()

    def resume_writing(self) -> None:
        self.owner._can_write.set()


class TelnetTransport:
    """A console reached through a telnet server. Writes escape 0xFF; BREAK is IAC BRK."""

    def __init__(
        self, host: str, port: int, description: str = "", *, connect_timeout: float = 10.0
    ) -> None:
        self.host, self.port = host, port
        self.description = description or f"telnet://{host}:{port}"
        self.connect_timeout = connect_timeout
        self._transport: asyncio.Transport | None = None
        self._sink: TransportSink | None = None
        self._parser = TelnetParser(self._send_raw)
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._closing = False
        self._lost_exc: Exception | None = None
        self._is_lost = False

    async def open(self, sink: TransportSink) -> None:
        if self._transport is not None or self._closing:
            raise RuntimeError(f"{self.description}: a transport is opened at most once")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port
                )
        except TimeoutError as exc:
            raise DeviceUnavailable(
                f"{self.description}: no answer within {self.connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            raise DeviceUnavailable(f"{self.description}: {exc.strerror or exc}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Resume writers only once the buffer is empty; pause above _HIGH_WATER.
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=0)
        self._sink = sink
        self._transport = transport
        transport.write(self._parser.offer())

    @property
    def options(self) -> dict[str, dict[int, bool]]:
        """Negotiated option state (for diagnostics and tests): {"local": ..., "remote": ...}."""
        return {"local": dict(self._parser.local), "remote": dict(self._parser.remote)}

    async def write(self, data: bytes) -> None:
        transport = self._usable()
        transport.write(telnet.escape(data))
        await self._wait_writable()

    async def drain(self) -> None:
        """Wait until our write buffer is empty (the bytes are in the kernel's socket buffer)."""
        transport = self._usable()
        if transport.get_write_buffer_size() == 0:
            return
        # High water 0 pauses us now; with low water 0 we are resumed once the buffer is empty.
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            await self._wait_writable()
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=_HIGH_WATER, low=0)

    async def send_break(self, duration: float) -> None:
        """Send IAC BRK. Telnet cannot say how long a break lasts (the server picks: QEMU and
        ser2net use their own length), so `duration` is honoured as a quiet time: earlier writes
        are drained first and nothing else is sent by this call until `duration` has passed, which
        keeps a following SysRq key in a separate read on the server side."""
        await self.drain()
        self._usable().write(bytes((telnet.IAC, telnet.BRK)))
        await self.drain()
        await asyncio.sleep(duration)

    def break_unsupported(self) -> str | None:
        return None  # IAC BRK: the server (ser2net, QEMU) turns it into a BREAK

    async def configure(
        self, settings: LineSettings | None = None, dtr: bool | None = None, rts: bool | None = None
    ) -> None:
        raise UnsupportedAction("a telnet console: its server (ser2net, QEMU) sets the line")

    def modem_state(self) -> ModemState | None:
        return None

    def line_errors(self) -> dict[str, int] | None:
        return None  # no line, no line errors

    async def close(self) -> None:
        self._closing = True
        transport, self._transport = self._transport, None
        if transport is not None and not transport.is_closing():
            transport.close()
        self._can_write.set()

    # -- internals ----------------------------------------------------------------------------

    def _usable(self) -> asyncio.Transport:
        if self._transport is None or self._is_lost or self._transport.is_closing():
            raise ConnectionResetError(f"{self.description}: not connected")
        return self._transport

    async def _wait_writable(self) -> None:
        if not self._can_write.is_set():
            await self._can_write.wait()
            if self._is_lost:
                raise ConnectionResetError(f"{self.description}: connection lost while writing")

    def _send_raw(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _received(self, data: bytes) -> None:
        clean = self._parser.feed(data)
        if clean and self._sink is not None and not self._closing:
            self._sink.data_received(clean)

    def _lost(self, exc: Exception | None) -> None:
        self._is_lost = True
        self._can_write.set()
        if not self._closing and self._sink is not None:
            self._sink.connection_lost(exc)
