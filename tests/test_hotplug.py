"""Hot-plug: a device that disappears and comes back, 50 times, with a client attached throughout;
no file descriptor leaks, and the port is back well within 2 s each time."""

from __future__ import annotations

import os

import pytest

from bridge.console import port as port_module
from bridge.hw.interfaces import TransportSink
from bridge.hw.virtual import VirtualShellTransport
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, wait_for


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_fifty_replugs_leave_the_daemon_healthy(
    bridge: Bridge, pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(port_module, "REOPEN_INTERVAL", 0.05)
    async with bridge.session("viewer") as s:
        r = WsReader(await bridge.ws(s, "lab", mode="ro"))
        await r.message("hello", online=True)
        pty_device.write(b"warm-up\r\n")
        await r.until(lambda r: b"warm-up" in r.data)
        baseline = open_fds()
        for i in range(50):
            pty_device.unplug()
            await r.until(lambda r, i=i: _count(r, "offline") == i + 1)
            pty_device.replace()
            await r.until(lambda r, i=i: _count(r, "online") == i + 1)
            pty_device.write(f"boot {i}\r\n".encode())
            await r.until(lambda r, i=i: f"boot {i}\r\n".encode() in r.data)
        assert open_fds() <= baseline
        assert bridge.port.online
        expected = b"warm-up\r\n" + b"".join(f"boot {i}\r\n".encode() for i in range(50))
        assert bytes(r.data) == expected


def _count(r: WsReader, event: str) -> int:
    return sum(1 for m in r.messages if m.get("type") == "status" and m.get("event") == event)


async def test_a_transport_failing_unexpectedly_is_retried(
    bridge_factory: BridgeFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only a missing device: whatever open() raises, the port keeps retrying."""
    monkeypatch.setattr(port_module, "REOPEN_INTERVAL", 0.05)
    attempts: list[int] = []

    class Flaky(VirtualShellTransport):
        async def open(self, sink: TransportSink) -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise RuntimeError("driver hiccup")
            await super().open(sink)

    b: Bridge = await bridge_factory(
        ports={"vm": {"device": "virtual:shell"}}, transport_factory=lambda cfg: Flaky()
    )
    await wait_for(lambda: b.port.online)
    assert len(attempts) == 3
    assert "driver hiccup" in caplog.text
