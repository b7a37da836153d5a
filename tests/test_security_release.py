"""Logout on release: `ports.*.on_release` bytes reach the target when the writer leaves, releases
or is taken over, and `writer_idle_timeout` takes the lease from an idle writer
(bridge/console/lease.py)."""

from __future__ import annotations

import asyncio
import json
import time

from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, wait_for

LOGOUT = "exit\r\x04"


async def _bridge(bridge_factory: BridgeFactory, pty_device: PtyDevice, **port: object) -> Bridge:
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path), "on_release": LOGOUT, **port}}
    )
    await wait_for(lambda: b.daemon.state is not None and b.daemon.state.ports["lab"].online)
    return b


async def _nothing_more(pty_device: PtyDevice, settle: float = 0.3) -> bytes:
    await asyncio.sleep(settle)
    return pty_device.drain_input()


async def test_writer_leaving_sends_on_release(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await _bridge(bridge_factory, pty_device)
    async with b.session(token_user="operator") as s, b.session(token_user="viewer") as v:
        viewer = await b.ws(v, "lab", mode="ro")
        await WsReader(viewer).message("hello")
        await viewer.close()
        assert await _nothing_more(pty_device) == b""  # a viewer leaving sends nothing
        ws = await b.ws(s, "lab", mode="rw")
        r = WsReader(ws)
        assert (await r.message("hello"))["mode"] == "rw"
        await ws.send_bytes(b"whoami\r")
        await pty_device.read_until(lambda got: got == b"whoami\r")
        await ws.close()
        got = await pty_device.read_until(lambda got: LOGOUT.encode() in got, timeout=5)
        assert got == LOGOUT.encode()


async def test_release_and_takeover_send_on_release(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await _bridge(bridge_factory, pty_device)
    async with b.session(token_user="operator") as o, b.session(token_user="admin") as a:
        first = WsReader(await b.ws(o, "lab", mode="rw"))
        assert (await first.message("hello"))["mode"] == "rw"
        await first.ws.send_str(json.dumps({"type": "release"}))
        await first.message("status", event="release")
        assert await pty_device.read_until(lambda g: LOGOUT.encode() in g, 5) == LOGOUT.encode()
        await first.ws.send_str(json.dumps({"type": "takeover"}))
        await first.message("status", event="lease")
        second = WsReader(await b.ws(a, "lab", mode="rw", takeover=1))
        assert (await second.message("hello"))["mode"] == "rw"
        await first.message("status", event="takeover")
        got = await pty_device.read_until(lambda g: LOGOUT.encode() in g, 5)
        assert got == LOGOUT.encode()  # the session the old writer left open is logged out
        assert await _nothing_more(pty_device) == b""  # exactly once
        await first.ws.close()
        await second.ws.close()


async def test_idle_writer_loses_the_lease(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await _bridge(bridge_factory, pty_device, writer_idle_timeout="1s")
    async with b.session(token_user="operator") as s:
        r = WsReader(await b.ws(s, "lab", mode="rw"))
        assert (await r.message("hello"))["mode"] == "rw"
        start = time.monotonic()
        last_key = start
        for _ in range(6):  # typing keeps the lease for longer than the timeout
            last_key = time.monotonic()
            await r.ws.send_bytes(b"k")
            await asyncio.sleep(0.3)
        assert not [m for m in r.messages if m.get("event") == "idle-release"]
        await pty_device.read_until(lambda g: g.count(b"k") == 6)
        status = await r.message("status", event="idle-release", timeout=5)
        lost_after = time.monotonic() - last_key
        assert status["mode"] == "ro" and status["writer"] is None
        assert time.monotonic() - start > 1.8
        got = await pty_device.read_until(lambda g: LOGOUT.encode() in g, 5)
        assert got == LOGOUT.encode()
        print(f"\nidle writer (timeout 1 s) lost the lease {lost_after:.2f} s after the last key")
        assert 1.0 <= lost_after < 3.0
        await r.ws.send_bytes(b"late")
        await r.message("error")
        assert await _nothing_more(pty_device) == b""  # no keystrokes without the lease
        await r.ws.close()


async def test_shutdown_with_a_writer_sends_on_release(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await _bridge(bridge_factory, pty_device)
    async with b.session(token_user="operator") as s:
        r = WsReader(await b.ws(s, "lab", mode="rw"))
        assert (await r.message("hello"))["mode"] == "rw"
        await b.daemon.stop()  # closes the websockets first: the writer leaves
        assert pty_device.drain_input() == LOGOUT.encode()
