"""The writer lease and `on_release`: the logout bytes reach the target before the next writer's
keys, and never inside a BREAK+key window (where the "e" of "exit" would be SysRq-e)."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.config import PortConfig
from bridge.hw.interfaces import TransportSink
from bridge.service.daemon import Daemon
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, make_config, wait_for


class LineRecorder:
    """A console transport that records what happens on the line, in order."""

    def __init__(self) -> None:
        self.description = "recorder"
        self.line: list[tuple[str, bytes]] = []

    async def open(self, sink: TransportSink) -> None:
        return None

    async def write(self, data: bytes) -> None:
        self.line.append(("write", data))

    async def drain(self) -> None:
        return None

    async def send_break(self, duration: float) -> None:
        self.line.append(("break", b""))
        await asyncio.sleep(duration)
        self.line.append(("break-end", b""))

    async def close(self) -> None:
        return None


async def test_takeover_sends_logout_before_the_new_writers_keys(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b: Bridge = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path), "baud": 4_000_000, "on_release": "exit\r"}}
    )
    await wait_for(lambda: b.port.online)
    async with b.session("operator") as s1, b.session("admin") as s2:
        first = WsReader(await b.ws(s1, "lab", mode="rw"))
        await first.message("hello", mode="rw")
        second = WsReader(await b.ws(s2, "lab", mode="rw"))
        await second.message("hello")
        await second.ws.send_str('{"type":"takeover"}')
        await second.ws.send_bytes(b"whoami\r")
        got = await pty_device.read_until(lambda b: b"whoami\r" in b)
        assert got == b"exit\rwhoami\r"


async def test_release_during_a_sysrq_sequence_waits_for_it(tmp_path: Any) -> None:
    recorder = LineRecorder()
    config = make_config(
        tmp_path,
        {"lab": {"device": "recorder", "break_duration": "50ms", "on_release": "exit\r"}},
    )

    def factory(cfg: PortConfig) -> LineRecorder:
        return recorder

    daemon = Daemon(config, transport_factory=factory)
    await daemon.start()
    try:
        assert daemon.state is not None
        port = daemon.state.ports["lab"]
        await wait_for(lambda: port.online)

        class Quiet:
            def send_chunk(self, chunk: Any) -> None: ...
            def send_history(self, offset: int, data: bytes) -> None: ...
            def send_gap(self, start: int, end: int) -> None: ...
            def send_message(self, message: dict[str, Any]) -> None: ...
            def backlog(self) -> int:
                return 0

            async def drained(self) -> None: ...

        writer = port.attach(Quiet(), "op", "test", "rw", False, port.offset)
        sequence = asyncio.ensure_future(port.sysrq("se", 0.05, "op"))
        await wait_for(lambda: ("break", b"") in recorder.line)
        await port.release(writer)  # leaves mid-sequence
        await sequence
        await wait_for(lambda: ("write", b"exit\r") in recorder.line)
        assert recorder.line == [
            ("break", b""),
            ("break-end", b""),
            ("write", b"s"),
            ("break", b""),
            ("break-end", b""),
            ("write", b"e"),
            ("write", b"exit\r"),
        ]
    finally:
        await daemon.stop()
