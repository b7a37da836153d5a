"""The console websocket's closing handshake, seen by a raw client over real TLS on 127.0.0.1.

When the bridge ends a console itself (1008: the credential ended; 1001: the port or the bridge is
going; 1009: a frame too large) it sends its close frame, sends nothing after it, and waits up to
CLOSE_WAIT for the client's close frame before it closes the connection: an orderly TLS
close_notify and FIN, so the client reads the code and the reason, not an abnormal closure or a
reset. A client that never answers is dropped after CLOSE_WAIT all the same.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from dataclasses import dataclass

import aiohttp
import pytest

from bridge.web import console
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, wait_for
from tests.test_security_support import client_tls


@dataclass
class RawWs:
    """A websocket client written by hand: it sees every frame, and the end of the stream."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def frame(self) -> tuple[int, bytes]:
        """The next frame (opcode, payload); server frames are unmasked and unfragmented here."""
        first, second = await self.reader.readexactly(2)
        assert not second & 0x80, "a server frame must not be masked"
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(n)

    async def until_close(self) -> tuple[int, str]:
        """Read up to the server's close frame: (code, reason)."""
        for _ in range(1000):
            opcode, payload = await self.frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
        raise AssertionError("no close frame")

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        if n < 126:
            length = struct.pack("!B", 0x80 | n)
        elif n < 65536:
            length = struct.pack("!BH", 0x80 | 126, n)
        else:
            length = struct.pack("!BQ", 0x80 | 127, n)
        self.writer.write(struct.pack("!B", 0x80 | opcode) + length + mask + masked)

    async def rest(self) -> bytes:
        """Everything up to the end of the stream: raises if it ends with a reset or without
        TLS's close_notify."""
        return await self.reader.read()


async def raw_console(b: Bridge, user: str = "operator", hello: bool = True) -> RawWs:
    host, port = b.daemon.addresses[0]
    reader, writer = await asyncio.open_connection(
        host, port, ssl=client_tls(), server_hostname="localhost"
    )
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /api/ports/lab/console?mode=rw HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\nAuthorization: Bearer {b.tokens[user]}\r\n\r\n"
        ).encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    ws = RawWs(reader, writer)
    if hello:
        opcode, payload = await ws.frame()
        assert opcode == 0x1 and b'"hello"' in payload
    return ws


@pytest.mark.parametrize("going_away", [False, True])
async def test_ended_console_completes_the_close_handshake(
    bridge: Bridge, pty_device: PtyDevice, going_away: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ended from another task (the credential watcher, a logout, a reload) while the session is
    reading: the close frame goes out, then the bridge waits for the client's."""
    monkeypatch.setattr(console, "CLOSE_WAIT", 60.0)  # the wait is not what ends it here
    consoles = bridge.daemon.state.consoles
    ws = await raw_console(bridge)
    session = next(iter(consoles))
    ending = asyncio.create_task(consoles.end([session], "token revoked", going_away))
    code, reason = await ws.until_close()
    assert (code, reason) == (1001 if going_away else 1008, "token revoked")
    assert len(consoles) == 1  # still waiting for the client's close frame
    pty_device.write(b"output after the close\r\n")  # not sent: nothing after a close frame
    await wait_for(lambda: bridge.port.offset >= 24)
    ws.send(0x8, struct.pack("!H", code))
    assert await ws.rest() == b""  # close_notify and FIN, no reset, no frame after the close
    await wait_for(lambda: len(consoles) == 0)
    await ending  # end() returns once the session is over


async def test_aiohttp_client_reads_the_code_and_its_reply_goes_out(bridge: Bridge) -> None:
    """aiohttp's client answers the close frame; the bridge used to drop the connection first, so
    the reply met a closed transport and the client ended with 1006 ("Cannot write to closing
    transport") — what `serial-bridge connect` had to work around."""
    consoles = bridge.daemon.state.consoles
    async with bridge.session(token_user="operator") as s:
        ws = await bridge.ws(s, "lab", mode="rw")
        await WsReader(ws).message("hello")
        # end() returns once the session is over, which takes the client's reply: another task
        ending = asyncio.create_task(consoles.end(list(consoles), "token revoked"))
        msg = await ws.receive(timeout=10)
        while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1008, "token revoked")
        assert ws.exception() is None and ws.close_code == 1008
        await ending
    await wait_for(lambda: len(consoles) == 0)


async def test_frame_too_large_closes_1009_with_nothing_after_the_close_frame(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    consoles = bridge.daemon.state.consoles
    ws = await raw_console(bridge)
    ws.send(0x2, b"x" * (console.MAX_FRAME + 1))
    opcode, payload = await ws.frame()
    assert opcode == 0x1 and b"refused (at most 65536)" in payload
    assert await ws.until_close() == (1009, "frame too large")
    pty_device.write(b"output after the close\r\n")  # not sent: nothing after a close frame
    await wait_for(lambda: bridge.port.offset >= 24)
    assert len(consoles) == 1  # waiting for the client's close frame
    ws.send(0x8, struct.pack("!H", 1009))
    assert await ws.rest() == b""
    await wait_for(lambda: len(consoles) == 0)
    assert pty_device.drain_input() == b""  # the refused frame's bytes never reached the port


async def test_a_client_that_never_answers_the_close_is_dropped_after_close_wait(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "CLOSE_WAIT", 0.2)
    consoles = bridge.daemon.state.consoles
    ws = await raw_console(bridge)
    await consoles.end(list(consoles), "token revoked")
    assert await ws.until_close() == (1008, "token revoked")
    assert await ws.rest() == b""  # the bridge closes without our close frame
    await wait_for(lambda: len(consoles) == 0)


async def test_port_full_closes_1013_and_waits_for_the_reply(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "CLOSE_WAIT", 60.0)
    b = await bridge_factory(ports={"lab": {"device": str(pty_device.path), "max_clients": 1}})
    first = await raw_console(b)
    second = await raw_console(b, hello=False)
    assert await second.until_close() == (1013, "port lab has 1 clients already")
    second.send(0x8, struct.pack("!H", 1013))
    assert await second.rest() == b""
    first.send(0x8, struct.pack("!H", 1000))
    assert await first.until_close() == (1000, "")
    assert await first.rest() == b""
