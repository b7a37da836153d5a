"""Output coalescing in the hub: a stream of small reads reaches clients as few, larger frames,
while the echo of typing is never held back."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.config import PortConfig
from bridge.console import coalesce
from bridge.console.fanout import Chunk
from bridge.console.port import Port
from bridge.hw.factory import NoLines


class Frames:
    """An outlet that records each frame (chunk) it is handed."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_chunk(self, chunk: Chunk) -> None:
        self.frames.append(chunk.data)

    def send_history(self, offset: int, data: bytes) -> None:
        self.frames.append(data)

    def send_gap(self, start: int, end: int) -> None: ...

    def send_message(self, message: dict[str, Any]) -> None: ...

    def backlog(self) -> int:
        return 0

    async def drained(self) -> None: ...


class Sink:
    description = "sink"

    def __init__(self) -> None:
        self.written = bytearray()

    async def open(self, sink: Any) -> None: ...

    async def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None: ...

    async def send_break(self, duration: float) -> None: ...

    def break_unsupported(self) -> str | None:
        return None

    async def close(self) -> None: ...


def make_port() -> tuple[Port, Frames, Sink]:
    sink = Sink()
    port = Port(PortConfig(name="p", device="x"), lambda cfg: sink, NoLines())
    port.transport = sink
    frames = Frames()
    return port, frames, sink


async def test_a_stream_of_small_reads_becomes_few_frames() -> None:
    port, frames, _ = make_port()
    port.attach(frames, "u", "peer", "ro", False, port.offset)
    for i in range(40):
        port.data_received(f"line {i:02d}\r\n".encode())
        await asyncio.sleep(0.002)
    await asyncio.sleep(coalesce.BATCH_WINDOW * 2)
    everything = b"".join(f"line {i:02d}\r\n".encode() for i in range(40))
    assert b"".join(frames.frames) == everything and port.offset == len(everything)
    assert frames.frames[0] == b"line 00\r\n"  # the first output after a pause goes at once
    assert len(frames.frames) < 10, f"{len(frames.frames)} frames for 40 small reads"


async def test_echo_of_typing_is_never_held_back() -> None:
    port, frames, sink = make_port()
    writer = port.attach(frames, "u", "peer", "rw", False, port.offset)
    port.data_received(b"booting...\r\n")
    port.data_received(b"more boot log\r\n")  # a stream: this one waits for the window
    assert frames.frames == [b"booting...\r\n"]
    await port.write(writer, b"l")  # typing: what was gathered goes out now
    assert frames.frames == [b"booting...\r\n", b"more boot log\r\n"]
    for key in b"s -l\r":
        port.data_received(bytes([key]))  # each echo goes out as soon as it is read
        assert frames.frames[-1] == bytes([key])
        await port.write(writer, bytes([key]))
    assert bytes(sink.written) == b"ls -l\r"
