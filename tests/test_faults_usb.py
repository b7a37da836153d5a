"""USB glitches (#14, faults 4) at the hardware boundary, with the real UART transport on ptys: a
read failing with EIO mid-stream, the device vanishing during a BREAK and during a paced paste.
Each time the port goes offline, is reopened and counted, every client stays connected and
served, and the action or keystrokes caught by it get a clear refusal, not a dead task."""

from __future__ import annotations

import errno
import os

import pytest

from bridge.console import port as port_module
from bridge.hw import uart
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, wait_for


@pytest.fixture(autouse=True)
def quick_reopen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(port_module, "REOPEN_INTERVAL", 0.05)


async def lab(bridge_factory: BridgeFactory, device: PtyDevice, **port: object) -> Bridge:
    b = await bridge_factory(ports={"lab": {"device": str(device.path), **port}})
    await wait_for(lambda: b.port is not None and b.port.online)
    return b


def statuses(r: WsReader, event: str) -> list[dict[str, object]]:
    return [m for m in r.messages if m.get("type") == "status" and m.get("event") == event]


async def still_served(r: WsReader, device: PtyDevice, text: bytes) -> None:
    """The client's connection still answers and still gets output."""
    await r.ws.send_json({"type": "ping"})
    await r.message("pong")
    device.write(text)
    await r.until(lambda r: text in r.data)


async def reopens(bridge: Bridge) -> float:
    async with bridge.session("admin") as s, s.get(f"{bridge.base}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith('serial_bridge_port_reopens_total{port="lab"}'):
                return float(line.split()[-1])
    raise AssertionError("no reopens series")


async def test_eio_mid_stream(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of the device fails with EIO while output streams (an adapter that resets; its
    node stays): what was read is kept and delivered, the port goes offline saying why, is
    reopened at once and counted, and the offsets go on."""
    bridge = await lab(bridge_factory, pty_device)
    real_read, glitch = os.read, []

    def read(fd: int, n: int) -> bytes:
        if glitch and fd == glitch[0]:
            glitch.clear()
            raise OSError(errno.EIO, "Input/output error")
        return real_read(fd, n)

    monkeypatch.setattr(uart.os, "read", read)
    async with bridge.session("viewer") as s:
        r = WsReader(await bridge.ws(s, "lab", mode="ro"))
        await r.message("hello")
        before = b"".join(b"streaming line %d\r\n" % i for i in range(200))
        pty_device.write(before)
        await r.until(lambda r: len(r.data) == len(before))
        glitch.append(bridge.port.transport._fd)
        pty_device.write(b"!")  # wakes the reader, whose read fails
        offline = await r.message("status", event="offline")
        assert "Input/output error" in str(offline["reason"])
        await r.message("status", event="online")
        await still_served(r, pty_device, b"after the glitch\r\n")
        assert bytes(r.data).startswith(before) and bytes(r.data).endswith(b"after the glitch\r\n")
        assert bridge.port.offset == len(r.data)  # one continuous stream
    assert await reopens(bridge) == 1


async def test_the_device_vanishes_during_a_break(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pty cannot carry a BREAK, but the kernel takes the request: with the check lifted, the
    real transport holds it for `break_duration`, and the pty's master goes away meanwhile."""
    monkeypatch.setattr(uart, "break_problem", lambda device, fd: None)
    bridge = await lab(bridge_factory, pty_device, break_duration="2s")
    async with bridge.session("operator") as s:
        r = WsReader(await bridge.ws(s, "lab", mode="rw"))
        await r.message("hello")
        await r.ws.send_json({"type": "break"})
        await wait_for(lambda: bridge.port.actions.breaks == 1)  # the BREAK is on the line
        pty_device.unplug()
        error = await r.message("error")
        assert "BREAK failed" in str(error["message"]) and "gone during the BREAK" in str(
            error["message"]
        )
        await r.message("status", event="offline")
        pty_device.replace()
        await r.message("status", event="online")
        await still_served(r, pty_device, b"after the break\r\n")
        await r.ws.send_bytes(b"typed\r")  # the lease and the keystrokes work again
        await wait_for(lambda: b"typed" in pty_device.drain_input())
    assert await reopens(bridge) == 1
    audit = (bridge.state_dir / "audit" / "audit.jsonl").read_text()
    assert '"break"' in audit and "gone during the BREAK" in audit


async def test_the_device_vanishes_during_a_paced_paste(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    """At 9600 baud a 20 KB paste takes 20 s: unplugged a little way in, the paste stops with a
    refusal, and the connection goes on (pings, output, typing after the replug)."""
    bridge = await lab(bridge_factory, pty_device, baud=9600)
    async with bridge.session("operator") as s:
        r = WsReader(await bridge.ws(s, "lab", mode="rw"))
        await r.message("hello")
        await r.ws.send_bytes(b"p" * 20_000)
        received = bytearray()

        def some_arrived() -> bool:
            received.extend(pty_device.drain_input())
            return len(received) > 100

        await wait_for(some_arrived)
        pty_device.unplug()
        error = await r.message("error")
        assert "keystrokes refused" in str(error["message"])
        assert len(received) < 20_000
        await r.message("status", event="offline")
        pty_device.replace()
        await r.message("status", event="online")
        await still_served(r, pty_device, b"after the replug\r\n")
        await r.ws.send_bytes(b"typed\r")
        await wait_for(lambda: b"typed" in pty_device.drain_input())
    assert await reopens(bridge) == 1
