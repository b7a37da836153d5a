"""The UART transport on a real pty: exclusive open, event-loop reads, paced writes, device loss."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from bridge.config import PortConfig
from bridge.hw.interfaces import DeviceUnavailable
from bridge.hw.uart import UartTransport
from tests.conftest import PtyDevice, wait_for


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def test_reads_writes_and_exclusive_open(pty_device: PtyDevice) -> None:
    cfg = PortConfig(name="t", device=str(pty_device.path), baud=4_000_000)
    uart, sink = UartTransport(cfg), Sink()
    await uart.open(sink)
    try:
        with pytest.raises(DeviceUnavailable):
            await UartTransport(cfg).open(Sink())
        pty_device.write(b"hello from the target")
        await wait_for(lambda: bytes(sink.data) == b"hello from the target")
        await uart.write(b"typed\r")
        assert await pty_device.read_until(lambda b: b == b"typed\r")
    finally:
        await uart.close()


async def test_writes_are_paced_at_the_line_rate_without_blocking_the_loop(
    pty_device: PtyDevice,
) -> None:
    cfg = PortConfig(name="t", device=str(pty_device.path), baud=115200)
    uart = UartTransport(cfg)
    await uart.open(Sink())
    payload = bytes(range(256)) * 16  # 4 KiB: 0.36 s at 115200 8N1
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    reading = asyncio.ensure_future(pty_device.read_until(lambda b: len(b) >= len(payload)))
    tick = asyncio.ensure_future(ticker())
    started = time.monotonic()
    await uart.write(payload)
    elapsed = time.monotonic() - started
    assert await reading == payload
    tick.cancel()
    await uart.close()
    line_time = len(payload) * 10 / 115200
    assert elapsed >= line_time * 0.8, f"not paced: {elapsed:.3f}s for {line_time:.3f}s of line"
    assert ticks >= 10, "the event loop was blocked while writing"


async def test_missing_device_and_unplug(tmp_path: Path, pty_device: PtyDevice) -> None:
    with pytest.raises(DeviceUnavailable, match="nothing-here"):
        await UartTransport(PortConfig(name="t", device=str(tmp_path / "nothing-here"))).open(
            Sink()
        )
    uart, sink = UartTransport(PortConfig(name="t", device=str(pty_device.path))), Sink()
    await uart.open(sink)
    pty_device.unplug()
    await wait_for(lambda: len(sink.lost) == 1)
    await uart.close()


async def test_pyserial_socket_url_device() -> None:
    received = bytearray()
    peer: list[asyncio.StreamWriter] = []

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer.append(writer)
        writer.write(b"login: ")
        await writer.drain()
        while data := await reader.read(1024):
            received.extend(data)

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    uart, sink = UartTransport(PortConfig(name="t", device=f"socket://127.0.0.1:{port}")), Sink()
    try:
        await uart.open(sink)
        await wait_for(lambda: bytes(sink.data) == b"login: ")
        await uart.write(b"root\r")
        await wait_for(lambda: bytes(received) == b"root\r")
    finally:
        await uart.close()
        for w in peer:
            w.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("baud", [9600, 115200, 230400, 921600, 3_000_000])
async def test_ticks_hold_at_every_baud_that_ticks(baud: int) -> None:
    """The tick lets the line fill at most half the tty buffer; a tick that carries what the line
    delivers meanwhile, even 20 % late, keeps ticking (at 230400 baud and above it used to fall
    back to immediate reads at every tick); one that reads TICK_LIMIT falls back."""
    from bridge.hw import pacing

    rate = baud / 10  # 8N1
    ticks = pacing.ReadTicks(rate)
    assert 0 < ticks.tick * rate <= pacing.TTY_BUFFER / 2
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    try:
        ticks.ticked(int(ticks.tick * rate * 1.2), loop, master, lambda: None, lambda: None)
        assert ticks.handle is not None, "a steady tick fell back to immediate reads"
        ticks.cancel()
        readable = asyncio.Event()
        ticks.ticked(pacing.TICK_LIMIT, loop, master, lambda: None, readable.set)
        assert ticks.handle is None
        os.write(slave, b"x")  # immediate reads after a tick near overrun: the reader wakes
        async with asyncio.timeout(10):
            await readable.wait()
    finally:
        loop.remove_reader(master)
        os.close(master)
        os.close(slave)


async def test_a_trickle_is_read_on_a_tick_and_a_write_brings_immediate_reads_back(
    pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small reads in quick succession (USB packets of slow output) switch the transport to one
    read per tick, which carries all that arrived meanwhile; a write switches back at once so
    the echo is read as soon as it arrives; unplugging while ticking is still noticed."""
    from bridge.hw import pacing

    monkeypatch.setattr(pacing, "TRICKLE_GAP", 60.0)  # any two small reads count as a trickle
    monkeypatch.setattr(pacing, "TYPING", 0.0)
    cfg = PortConfig(name="t", device=str(pty_device.path), baud=115200)
    uart, sink = UartTransport(cfg), Sink()
    await uart.open(sink)
    loop = asyncio.get_running_loop()
    fd = uart._fd
    try:
        for i in range(2):
            pty_device.write(b"p%d " % i)
            await wait_for(lambda i=i: sink.data.endswith(b"p%d " % i))
        assert uart._ticks.handle is not None, "not ticking after a trickle"
        # asyncio's loop shows its readers (uvloop's does not): none while ticking
        selector = getattr(loop, "_selector", None)
        assert selector is None or selector.get_map().get(fd) is None
        pty_device.write(b"a" * 62)
        pty_device.write(b"b" * 62)
        await wait_for(lambda: sink.data.endswith(b"a" * 62 + b"b" * 62), timeout=5)
        assert uart._ticks.handle is not None
        await uart.write(b"k")
        assert uart._ticks.handle is None
        assert selector is None or selector.get_map().get(fd) is not None
        pty_device.write(b"echo")
        await wait_for(lambda: sink.data.endswith(b"echo"))
        pty_device.write(b"q1 ")
        await wait_for(lambda: sink.data.endswith(b"q1 "))
        assert uart._ticks.handle is not None
        pty_device.unplug()
        await wait_for(lambda: len(sink.lost) == 1)
    finally:
        await uart.close()
