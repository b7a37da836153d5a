"""Replies to what a console client sends cannot grow the daemon's memory (#18.7): error replies
are short and rate-limited, and a client that sends but never reads is cut off at its budget."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from pathlib import Path

from bridge.web.console import REPLY_MARGIN
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, wait_for
from tests.test_security_support import client_tls


async def test_error_replies_are_short_and_rate_limited(bridge: Bridge) -> None:
    """Fifty 60 KB messages of an unknown type used to get fifty 60 KB errors back."""
    async with bridge.session(token_user="viewer") as v:
        ws = await bridge.ws(v, "lab", mode="ro")
        reader = WsReader(ws)
        await reader.message("hello")
        for _ in range(50):
            await ws.send_str(json.dumps({"type": "x" * 60_000}))
        await ws.send_str('{"type": "ping"}')
        await reader.message("pong")
        errors = [m["message"] for m in reader.messages if m["type"] == "error"]
        assert 10 <= len(errors) < 50  # a burst of ten, then five a second
        assert all(len(e) <= 250 for e in errors)
        await asyncio.sleep(0.4)  # at least one more may go out now
        await ws.send_str('{"type": "nonsense"}')
        await reader.until(lambda r: "nonsense" in str(r.messages[-1]))
        assert "more errors not shown" in reader.messages[-1]["message"]
        await ws.close()


def _frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455)."""
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


PING = _frame(b'{"type":"ping"}')
PONG_BYTES = 2 + len(b'{"type":"pong"}')  # the fewest bytes a pong can take on the wire


def _kernel_holds() -> int:
    """The most bytes the kernel may buffer one way on one loopback connection: the sender's send
    buffer plus the receiver's receive buffer, at the largest sizes autotuning may grow them to
    (the third field of net.ipv4.tcp_wmem and tcp_rmem; 4 + 32 MiB where this test once failed)."""
    most = (
        Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2]
        for name in ("tcp_wmem", "tcp_rmem")
    )
    return sum(int(n) for n in most)


async def test_a_client_that_sends_but_never_reads_is_cut_off(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    """Pings answered with pongs nobody reads used to pile up in the daemon without bound; past
    the client's budget (client_buffer + REPLY_MARGIN) the connection is dropped.

    The client shares the daemon's event loop here, so it yields after every batch as a client in
    its own process would (drain() does not yield while the kernel takes its writes, and the kernel
    takes tens of MB: the daemon's receive buffer autotunes up to tcp_rmem's maximum). The client
    gives up only after more pings than every buffer on the way can hold (the kernel's both ways,
    the loop's and TLS's, the budget): a daemon that keeps answering must have queued the rest."""
    b = await bridge_factory(ports={"lab": {"device": str(pty_device.path), "client_buffer": 0}})
    host, port = b.daemon.addresses[0]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads almost nothing
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=client_tls(), server_hostname="localhost", limit=4096
    )
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /api/ports/lab/console?mode=ro HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\nAuthorization: Bearer {b.tokens['viewer']}\r\n\r\n"
        ).encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    consoles = b.daemon.state.consoles
    await wait_for(lambda: len(consoles) == 1)
    user_space = 4 * 1024 * 1024  # TLS and transport buffers both ends, aiohttp's reader queue
    unread_pings = (_kernel_holds() + user_space) // len(PING)
    unread_pongs = (_kernel_holds() + user_space + REPLY_MARGIN) // PONG_BYTES
    most = unread_pings + unread_pongs
    batch = PING * 1000
    sent = 0
    try:
        while len(consoles) and sent < most:
            writer.write(batch)
            await writer.drain()
            sent += 1000
            await asyncio.sleep(0)  # the daemon's turn
    except ConnectionError:
        pass
    finally:
        writer.transport.abort()
    await wait_for(lambda: len(consoles) == 0)
    assert sent < most, f"the client was never cut off ({sent:,} pings)"
    print(f"\na client not reading its pongs was cut off after {sent:,} pings (of {most:,})")
