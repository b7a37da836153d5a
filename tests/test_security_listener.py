"""What the listener gives away before anyone is authenticated: TLS handshakes are bounded in
time and in number per address (#18.20), the access log cannot be forged or fed escape sequences
through the path (#18.13), and no response names the server's software versions (#18.21)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import pytest

from bridge.service import listener
from bridge.service.listener import BoundedTLSSite
from tests.conftest import Bridge, BridgeFactory, PtyDevice, wait_for
from tests.test_security_support import client_tls


def _site(bridge: Bridge) -> BoundedTLSSite:
    assert bridge.daemon.runner is not None
    (site,) = bridge.daemon.runner.sites
    assert isinstance(site, BoundedTLSSite)
    return site


async def _raw(bridge: Bridge, head: bytes) -> bytes:
    """Send `head` over TLS and read the whole answer (the server closes the connection)."""
    host, port = bridge.daemon.addresses[0]
    reader, writer = await asyncio.open_connection(host, port, ssl=client_tls())
    try:
        writer.write(head)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_idle_and_partial_tls_handshakes_are_cut_off(bridge: Bridge) -> None:
    """A client that connects and never finishes its handshake is dropped after
    HANDSHAKE_TIMEOUT (5 s), not asyncio's 60 s."""
    host, port = bridge.daemon.addresses[0]
    idle = await asyncio.open_connection(host, port)
    partial = await asyncio.open_connection(host, port)
    partial[1].write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
    loop = asyncio.get_running_loop()
    start = loop.time()
    for reader, writer in (idle, partial):
        try:
            assert await asyncio.wait_for(reader.read(), 3 * listener.HANDSHAKE_TIMEOUT) == b""
        except ConnectionResetError:
            pass  # closed, with a reset: as good
        finally:
            writer.close()
    took = loop.time() - start
    print(f"\nhalf-open TLS handshakes dropped after {took:.1f} s")
    assert listener.HANDSHAKE_TIMEOUT <= 5.0
    await wait_for(lambda: not _site(bridge).pending)


async def test_pending_handshakes_per_address_are_capped(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    """One address holding MAX_PENDING_PER_SOURCE half-open handshakes gets its next connection
    closed at once; another address is served meanwhile, and so is the first once they end."""
    b = await bridge_factory(ports={"lab": {"device": str(pty_device.path)}})
    host, port = b.daemon.addresses[0]
    site = _site(b)
    held = [
        await asyncio.open_connection(host, port) for _ in range(listener.MAX_PENDING_PER_SOURCE)
    ]
    try:
        await wait_for(lambda: site.pending.get("127.0.0.1") == listener.MAX_PENDING_PER_SOURCE)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            assert await asyncio.wait_for(reader.read(), 3) == b""  # closed before any TLS
        except ConnectionResetError:
            pass
        finally:
            writer.close()
        connector = aiohttp.TCPConnector(ssl=b.ssl_pin(), local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as other,
            other.get(f"{b.base}/healthz") as resp,
        ):
            assert resp.status == 200
    finally:
        for _, w in held:
            w.close()
    await wait_for(lambda: not site.pending)
    async with b.session() as s, s.get(f"{b.base}/healthz") as resp:
        assert resp.status == 200


async def test_access_log_escapes_the_path(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    host, port = bridge.daemon.addresses[0]
    answer = await _raw(
        bridge,
        b"GET /x%0a203.0.113.1%20%22GET%20/forged%22%20200%1b[2J%0d HTTP/1.1\r\n"
        + f"Host: {host}:{port}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 404")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]

    await wait_for(lambda: bool(logged()))
    (line,) = logged()
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.count('"') == 2  # only the quotes around the request itself
    assert "/x\\x0a203.0.113.1 \\x22GET /forged\\x22 200\\x1b[2J\\x0d" in line


async def test_no_version_banner(bridge: Bridge) -> None:
    """`Server: serial-bridge`, never `Python/3.x aiohttp/3.y`: on the app's answers and on the
    400 aiohttp's parser sends before any app code runs."""
    async with bridge.session() as s, s.get(f"{bridge.base}/healthz") as resp:
        assert resp.headers["Server"] == "serial-bridge"
    async with bridge.session() as s, s.get(f"{bridge.base}/no/such/page") as resp:
        assert resp.status == 404 and resp.headers["Server"] == "serial-bridge"
    answer = await _raw(bridge, b"GET / HTTP/1.1\r\nHost: localhost\r\nno colon\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert head.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), head
    assert b"\r\nServer: serial-bridge\r\n" in head + b"\r\n"
    assert b"aiohttp" not in answer and b"Python" not in answer
