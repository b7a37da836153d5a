"""The writer lease and `on_release`: the logout bytes reach the target before the next writer's
keys, never inside a BREAK+key window (where the "e" of "exit" would be SysRq-e), and without
waiting for a whole SysRq sequence."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.config import PortConfig
from bridge.console.actions import ActionCancelled
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

    def break_unsupported(self) -> str | None:
        return None

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


class Quiet:
    """A viewer that discards what it is sent."""

    def send_chunk(self, chunk: Any) -> None: ...
    def send_history(self, offset: int, data: bytes) -> None: ...
    def send_gap(self, start: int, end: int) -> None: ...
    def send_message(self, message: dict[str, Any]) -> None: ...
    def backlog(self) -> int:
        return 0

    async def drained(self) -> None: ...


async def test_on_release_and_keys_wait_only_for_the_key_on_the_line(tmp_path: Any) -> None:
    """A takeover in the middle of a long SysRq sequence: the logout goes out as soon as the
    BREAK+key on the line is over, and the new writer types at once after it, while the sequence
    still waits for its next key (formerly both waited for the whole sequence)."""
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
        first = port.attach(Quiet(), "op", "test", "rw", False, port.offset)
        second = port.attach(Quiet(), "admin", "test", "rw", False, port.offset)
        sequence = asyncio.ensure_future(port.sysrq("se", 10.0, "op"))
        await wait_for(lambda: ("break", b"") in recorder.line)
        port.take_over(second)  # mid-BREAK: "exit" must not become the SysRq key
        await port.write(second, b"ls\r")
        assert recorder.line == [
            ("break", b""),
            ("break-end", b""),
            ("write", b"s"),
            ("write", b"exit\r"),
            ("write", b"ls\r"),
        ]
        assert not sequence.done(), "the sequence should still be waiting for its next key"
        port.cancel_action("admin", any_user=True)
        with pytest.raises(ActionCancelled, match="cancelled by admin after 1 of 2 keys"):
            await sequence
        assert recorder.line[-1] == ("write", b"ls\r")  # no "e" after the cancel
        await port.detach(first)
    finally:
        await daemon.stop()
