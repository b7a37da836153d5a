"""The core bridge end to end: a pty as the UART, the real daemon, TLS websockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import zlib

import aiohttp
import pytest

from tests.conftest import PASSWORDS, Bridge, PtyDevice, WsReader, wait_for


async def test_bytes_flow_both_ways(bridge: Bridge, pty_device: PtyDevice) -> None:
    async with bridge.session("operator") as s:
        ws = await bridge.ws(s, "lab", mode="rw")
        r = WsReader(ws)
        hello = await r.message("hello")
        assert hello["mode"] == "rw" and hello["online"] is True
        await ws.send_bytes(b"ls -l\r")
        assert (await pty_device.read_until(lambda b: b"ls -l\r" in b)).endswith(b"ls -l\r")
        pty_device.write(b"total 0\r\n\xff\x00binary ok")
        await r.until(lambda r: b"binary ok" in r.data)
        assert bytes(r.data) == b"total 0\r\n\xff\x00binary ok"
        await ws.close()


async def test_writer_and_twenty_readers_get_identical_bytes(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    payload = os.urandom(512 * 1024)
    async with bridge.session("viewer") as s:
        readers = [WsReader(await bridge.ws(s, "lab", mode="ro")) for _ in range(20)]
        for r in readers:
            await r.message("hello")
        await pty_device.awrite(payload)
        for r in readers:
            await r.until(lambda r: len(r.data) >= len(payload), timeout=30)
            assert zlib.crc32(r.data) == zlib.crc32(payload) and len(r.data) == len(payload)
            assert not [m for m in r.messages if m["type"] == "gap"]
            await r.ws.close()


async def _stalled_websocket(bridge: Bridge, token: str) -> tuple[asyncio.StreamReader, object]:
    """A TLS websocket client that upgrades and then reads nothing (tiny receive buffer)."""
    import socket
    import ssl

    host, port = bridge.daemon.addresses[0]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="localhost")
    writer.write(
        (
            f"GET /api/ports/lab/console?mode=ro HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _text_frames(raw: bytes) -> list[bytes]:
    """Parse unmasked server frames; return the text payloads."""
    out, i = [], 0
    while i + 2 <= len(raw):
        op, n = raw[i] & 0x0F, raw[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(raw[i : i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(raw[i : i + 8], "big"), i + 8
        if op == 1:
            out.append(raw[i : i + n])
        i += n
    return out


async def test_stalled_reader_does_not_slow_others_and_gets_a_gap(
    bridge_factory: object, pty_device: PtyDevice
) -> None:
    b: Bridge = await bridge_factory(  # type: ignore[operator]
        ports={
            "lab": {
                "device": str(pty_device.path),
                "baud": 4_000_000,
                "client_buffer": "64KiB",
                "scrollback": "64KiB",
            }
        }
    )
    await wait_for(lambda: b.daemon.state.ports["lab"].online)  # type: ignore[union-attr]
    stalled_reader, stalled_writer = await _stalled_websocket(b, b.tokens["viewer"])
    payload = os.urandom(24 * 1024 * 1024)
    async with b.session("viewer") as s:
        live = WsReader(await b.ws(s, "lab", mode="ro"))
        await live.message("hello")
        writing = asyncio.ensure_future(pty_device.awrite(payload))
        await live.until(lambda r: len(r.data) >= len(payload), timeout=120)
        await writing
        assert zlib.crc32(live.data) == zlib.crc32(payload)
        assert not [m for m in live.messages if m["type"] == "gap"]
        # now the stalled client reads what it has: somewhere a gap is announced
        raw = bytearray()
        while True:
            try:
                raw += await asyncio.wait_for(stalled_reader.read(1 << 20), 2)
            except TimeoutError:
                break
            if b'"gap"' in raw and len(raw) > 64 * 1024:
                break
        gaps = [t for t in _text_frames(bytes(raw)) if b'"type":"gap"' in t]
        assert gaps, "the stalled client was never told what it missed"
        assert b.daemon.state.ports["lab"].gaps_sent >= len(gaps)  # type: ignore[union-attr]
        stalled_writer.transport.abort()  # type: ignore[attr-defined]  (it holds unread data)
        await live.ws.close()


async def test_takeover_demotes_and_notifies(bridge: Bridge, pty_device: PtyDevice) -> None:
    async with bridge.session("operator") as s1, bridge.session("admin") as s2:
        first = WsReader(await bridge.ws(s1, "lab", mode="rw"))
        assert (await first.message("hello"))["mode"] == "rw"
        second = WsReader(await bridge.ws(s2, "lab", mode="rw"))
        hello2 = await second.message("hello")
        assert hello2["mode"] == "ro" and hello2["writer"] == "operator"
        await second.ws.send_str('{"type": "takeover"}')
        demoted = await first.message("status", event="takeover")
        assert demoted["mode"] == "ro" and demoted["writer"] == "admin"
        await second.message("status", event="takeover", mode="rw")
        await first.ws.send_bytes(b"from-old-writer\r")
        err = await first.message("error")
        assert "read-only" in err["message"]
        await second.ws.send_bytes(b"from-new-writer\r")
        got = await pty_device.read_until(lambda b: b"from-new-writer\r" in b)
        assert b"from-old-writer" not in got


async def test_viewer_cannot_write(bridge: Bridge, pty_device: PtyDevice) -> None:
    async with bridge.session("viewer") as s:
        r = WsReader(await bridge.ws(s, "lab", mode="rw"))
        hello = await r.message("hello")
        assert hello["mode"] == "ro"
        await r.ws.send_bytes(b"reboot\r")
        await r.ws.send_str('{"type":"sysrq","keys":"b"}')
        await r.until(lambda r: len([m for m in r.messages if m["type"] == "error"]) >= 3)
        await asyncio.sleep(0.2)
        assert pty_device.drain_input() == b""


async def test_foreign_origin_refused(bridge: Bridge) -> None:
    async with bridge.session("admin") as s:
        for origin in ("https://evil.example", "null", f"{bridge.base}.evil.example"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(
                    f"{bridge.base}/api/ports/lab/console", headers={"Origin": origin}
                )
            assert exc.value.status == 403


async def test_wrong_password_forged_and_expired_sessions_refused(
    bridge_factory: object, pty_device: PtyDevice
) -> None:
    b: Bridge = await bridge_factory(  # type: ignore[operator]
        ports={"lab": {"device": str(pty_device.path)}}, server={"session_idle": "1s"}
    )
    async with b.session() as s:
        resp = await s.post(
            f"{b.base}/api/login", json={"username": "admin", "password": "wrong-password"}
        )
        assert resp.status == 401
        s.cookie_jar.update_cookies({"__Host-sb_session": "forged" * 7})
        assert (await s.get(f"{b.base}/api/ports")).status == 401
    async with b.session() as s:
        resp = await s.post(
            f"{b.base}/api/login", json={"username": "admin", "password": PASSWORDS["admin"]}
        )
        assert resp.status == 200
        assert (await s.get(f"{b.base}/api/ports")).status == 200
        await asyncio.sleep(1.3)
        assert (await s.get(f"{b.base}/api/ports")).status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await b.ws(s, "lab")
        assert exc.value.status == 401


async def test_device_gone_and_back_without_restart(bridge: Bridge, pty_device: PtyDevice) -> None:
    async with bridge.session("viewer") as s:
        r = WsReader(await bridge.ws(s, "lab", mode="ro"))
        await r.message("hello", online=True)
        pty_device.unplug()
        await r.message("status", event="offline", online=False)
        pty_device.replace()
        await r.message("status", event="online", online=True)
        pty_device.write(b"back again\r\n")
        await r.until(lambda r: b"back again" in r.data)


async def test_resume_from_offset_gets_exactly_the_missed_bytes(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    async with bridge.session("viewer") as s:
        r = WsReader(await bridge.ws(s, "lab", mode="ro"))
        start = (await r.message("hello"))["offset"]
        pty_device.write(b"before the drop\r\n")
        await r.until(lambda r: r.data.endswith(b"drop\r\n"))
        resume_at = start + len(r.data)
        await r.ws.close()
        missed = b"printed while away\r\n" * 100
        pty_device.write(missed)
        await wait_for(lambda: bridge.port.offset == resume_at + len(missed))
        again = WsReader(await bridge.ws(s, "lab", mode="ro", **{"from": resume_at}))
        hello = await again.message("hello")
        assert hello["offset"] == resume_at and hello["from"] == resume_at
        await again.until(lambda r: len(r.data) >= len(missed))
        assert bytes(again.data) == missed
        tail = WsReader(await bridge.ws(s, "lab", mode="ro", **{"from": -10}))
        await tail.until(lambda r: len(r.data) >= 10)
        assert bytes(tail.data) == missed[-10:]


async def test_one_mebibyte_paste_arrives_intact(bridge: Bridge, pty_device: PtyDevice) -> None:
    paste = os.urandom(1024 * 1024)
    async with bridge.session("operator") as s:
        ws = await bridge.ws(s, "lab", mode="rw")
        await WsReader(ws).message("hello")

        async def send() -> None:
            for i in range(0, len(paste), 32 * 1024):
                await ws.send_bytes(paste[i : i + 32 * 1024])

        sending = asyncio.ensure_future(send())
        got = await pty_device.read_until(lambda b: len(b) >= len(paste), timeout=60)
        await sending
        assert got == paste


async def test_bad_frames_get_errors_and_the_daemon_carries_on(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    async with bridge.session("operator") as s:
        bystander = WsReader(await bridge.ws(s, "lab", mode="ro"))
        await bystander.message("hello")
        r = WsReader(await bridge.ws(s, "lab", mode="rw"))
        await r.message("hello")
        await r.ws.send_str("{not json")
        assert "malformed" in (await r.message("error"))["message"]
        await r.ws.send_str('{"type": "launch-missiles"}')
        await r.until(lambda r: len([m for m in r.messages if m["type"] == "error"]) == 2)
        await r.ws.send_str('{"type":"sysrq","keys":"?"}')
        await r.until(lambda r: len([m for m in r.messages if m["type"] == "error"]) == 3)
        await r.ws.send_bytes(b"x" * (65 * 1024))
        await r.until(lambda r: r.closed)
        assert r.ws.close_code == 1009
        pty_device.write(b"still alive\r\n")
        await bystander.until(lambda r: b"still alive" in r.data)


async def test_ports_list_and_healthz(bridge: Bridge) -> None:
    async with bridge.session("viewer") as s:
        ports = await (await s.get(f"{bridge.base}/api/ports")).json()
        assert [p["name"] for p in ports] == ["lab"]
        assert ports[0]["online"] is True and ports[0]["framing"] == "8N1"
    async with bridge.session() as s:
        assert (await s.get(f"{bridge.base}/healthz")).status == 200
        assert (await s.get(f"{bridge.base}/api/ports")).status == 401
