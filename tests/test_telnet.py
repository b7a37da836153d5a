"""TelnetTransport against a real asyncio TCP server on 127.0.0.1 that speaks raw telnet bytes,
plus the parser on every split point of a stream (reads may cut a command anywhere)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bridge.common.telnet import escape
from bridge.hw.interfaces import DeviceUnavailable
from bridge.hw.telnet import TelnetParser, TelnetTransport, parse_telnet_url

IAC, DONT, DO, WONT, WILL, SB, SE, BRK = 255, 254, 253, 252, 251, 250, 240, 243
BINARY, ECHO, SGA, STATUS, TTYPE, NAWS = 0, 1, 3, 5, 24, 31
OFFERS = bytes([IAC, WILL, BINARY, IAC, DO, BINARY, IAC, WILL, SGA, IAC, DO, SGA])
TIMEOUT = 5.0


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.changed = asyncio.Event()
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        self.changed.set()

    async def wait_for(self, text: bytes) -> None:
        async with asyncio.timeout(TIMEOUT):
            while text not in self.data:
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Peer:
    """The server side of one connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_until(self, size: int) -> bytes:
        """Read until `size` bytes in total have arrived; returns all of them."""
        async with asyncio.timeout(TIMEOUT):
            while len(self.received) < size:
                chunk = await self.reader.read(65536)
                assert chunk, "client closed"
                self.received += chunk
        return bytes(self.received)


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, asyncio.Queue[Peer]]]:
    peers: asyncio.Queue[Peer] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await peers.put(Peer(reader, writer))

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    yield port, peers
    for w in writers:
        w.close()
    srv.close()
    await srv.wait_closed()


@pytest.fixture
async def connected(
    server: tuple[int, asyncio.Queue[Peer]],
) -> AsyncIterator[tuple[TelnetTransport, Sink, Peer]]:
    port, peers = server
    transport = TelnetTransport("127.0.0.1", port)
    sink = Sink()
    await transport.open(sink)
    async with asyncio.timeout(TIMEOUT):
        peer = await peers.get()
    assert await peer.read_until(len(OFFERS)) == OFFERS
    peer.received.clear()
    yield transport, sink, peer
    await transport.close()


def test_parse_telnet_url() -> None:
    assert parse_telnet_url("telnet://127.0.0.1:4000") == ("127.0.0.1", 4000)
    assert parse_telnet_url("telnet://ts1.lab:2001/") == ("ts1.lab", 2001)
    assert parse_telnet_url("telnet://[::1]:23") == ("::1", 23)
    for bad in ("telnet://host", "rfc2217://h:1", "telnet://h:0", "telnet://h:70000", "h:1"):
        with pytest.raises(ValueError, match="telnet"):
            parse_telnet_url(bad)


def test_escape_iac() -> None:
    assert escape(b"plain") == b"plain"
    assert escape(b"\xff\x00\xff") == b"\xff\xff\x00\xff\xff"


STREAM = (
    b"boot\r\n"
    + bytes([IAC, WILL, ECHO, IAC, DO, TTYPE])
    + b"x\xff\xffy"
    + bytes([IAC, SB, TTYPE, 1, IAC, IAC, 7, IAC, SE])
    + bytes([IAC, 241])  # NOP
    + b"end"
)
CLEAN = b"boot\r\nx\xffyend"
REPLIES = bytes([IAC, DO, ECHO, IAC, WONT, TTYPE])


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_parser_same_result_for_every_split(cut: int) -> None:
    replies = bytearray()
    parser = TelnetParser(replies.extend)
    out = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
    assert out == CLEAN
    assert bytes(replies) == REPLIES


def test_parser_byte_by_byte_and_fast_path() -> None:
    replies = bytearray()
    parser = TelnetParser(replies.extend)
    chunk = b"no commands here" * 100
    assert parser.feed(chunk) is chunk  # passed through untouched
    out = b"".join(parser.feed(STREAM[i : i + 1]) for i in range(len(STREAM)))
    assert out == CLEAN
    assert bytes(replies) == REPLIES


def test_parser_skips_broken_framing_from_the_server() -> None:
    """What a strict parser refuses (bridge.common.telnet) the console transport reads past."""
    replies = bytearray()
    parser = TelnetParser(replies.extend)
    stream = (
        b"a"
        + bytes([IAC, SE])  # SE outside a subnegotiation
        + b"b"
        + bytes([IAC, SB, TTYPE, 1, IAC, 241, 2, IAC, SE])  # a command inside one
        + b"c"
        + bytes([IAC, SB, TTYPE])
        + b"x" * 1000  # a long one
        + bytes([IAC, SE, IAC, WILL, ECHO])
        + b"d"
    )
    assert parser.feed(stream) == b"abcd"
    assert bytes(replies) == bytes([IAC, DO, ECHO])


def test_parser_negotiation_never_loops() -> None:
    replies = bytearray()
    parser = TelnetParser(replies.extend)
    assert parser.offer() == OFFERS
    # Acks of our offers, then the same requests again: no answers at all.
    parser.feed(bytes([IAC, DO, BINARY, IAC, WILL, BINARY, IAC, DO, SGA, IAC, WILL, SGA]))
    parser.feed(bytes([IAC, DO, BINARY, IAC, WILL, SGA]))
    assert replies == b""
    assert parser.local == {BINARY: True, SGA: True}
    # Refused options are refused once per request; turning ours off is acknowledged once.
    parser.feed(bytes([IAC, WILL, STATUS, IAC, DO, NAWS, IAC, DONT, SGA, IAC, DONT, SGA]))
    assert bytes(replies) == bytes([IAC, DONT, STATUS, IAC, WONT, NAWS, IAC, WONT, SGA])
    assert parser.local[SGA] is False


async def test_negotiation_is_answered_and_stripped(
    connected: tuple[TelnetTransport, Sink, Peer],
) -> None:
    transport, sink, peer = connected
    # What QEMU's telnet chardev sends, plus requests we refuse.
    await peer.send(
        bytes([IAC, WILL, ECHO, IAC, WILL, SGA, IAC, WILL, BINARY, IAC, DO, BINARY])
        + bytes([IAC, DO, TTYPE, IAC, DO, NAWS, IAC, WILL, STATUS])
        + b"login: "
    )
    await sink.wait_for(b"login: ")
    assert bytes(sink.data) == b"login: "
    answers = bytes([IAC, DO, ECHO, IAC, WONT, TTYPE, IAC, WONT, NAWS, IAC, DONT, STATUS])
    assert await peer.read_until(len(answers)) == answers
    assert transport.options == {
        "local": {BINARY: True},
        "remote": {ECHO: True, SGA: True, BINARY: True},
    }


async def test_iac_doubled_on_write_and_undoubled_on_read_across_reads(
    connected: tuple[TelnetTransport, Sink, Peer],
) -> None:
    transport, sink, peer = connected
    await transport.write(b"a\xffb\xff")
    assert await peer.read_until(6) == b"a\xff\xffb\xff\xff"
    await peer.send(b"one\xff")  # the escape is cut in the middle
    await sink.wait_for(b"one")
    await peer.send(b"\xfftwo" + bytes([IAC, WILL]))  # and a command cut after its verb
    await sink.wait_for(b"two")
    await peer.send(bytes([ECHO]) + b"three")
    await sink.wait_for(b"three")
    assert bytes(sink.data) == b"one\xfftwothree"


async def test_break_is_iac_brk_after_earlier_data(
    connected: tuple[TelnetTransport, Sink, Peer],
) -> None:
    transport, _sink, peer = connected
    await transport.write(b"m")
    await transport.send_break(0.0)
    await transport.write(b"h")
    assert await peer.read_until(4) == b"m\xff\xf3h"


async def test_peer_close_reports_connection_lost(
    connected: tuple[TelnetTransport, Sink, Peer],
) -> None:
    transport, sink, peer = connected
    await peer.send(b"bye")
    peer.writer.close()
    async with asyncio.timeout(TIMEOUT):
        while not sink.lost:
            sink.changed.clear()
            await sink.changed.wait()
    assert sink.data == b"bye"
    assert len(sink.lost) == 1
    with pytest.raises(ConnectionError):
        await transport.write(b"x")


async def test_our_close_does_not_report_connection_lost(
    connected: tuple[TelnetTransport, Sink, Peer],
) -> None:
    transport, sink, peer = connected
    await transport.close()
    await transport.close()
    async with asyncio.timeout(TIMEOUT):
        assert await peer.reader.read() == b""
    await asyncio.sleep(0)  # let the transport's connection_lost callback run
    assert sink.lost == []


async def test_write_waits_while_the_peer_does_not_read(
    connected: tuple[TelnetTransport, Sink, Peer],
) -> None:
    transport, _sink, peer = connected
    size = 32 * 1024 * 1024  # more than loopback socket buffers can hold
    writing = asyncio.create_task(transport.write(b"\x00" * size))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not writing.done()  # paused by flow control, not buffered without bound
    await peer.read_until(size)
    async with asyncio.timeout(TIMEOUT):
        await writing
    await transport.drain()


async def test_drain_returns_once_written(
    connected: tuple[TelnetTransport, Sink, Peer],
) -> None:
    transport, _sink, peer = connected
    await transport.write(b"ls\r")
    async with asyncio.timeout(TIMEOUT):
        await transport.drain()
    assert await peer.read_until(3) == b"ls\r"


async def test_unreachable_server_is_device_unavailable() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(DeviceUnavailable, match=f"telnet://127.0.0.1:{port}"):
        await TelnetTransport("127.0.0.1", port).open(Sink())


async def test_drain_waits_until_the_peer_took_everything(
    connected: tuple[TelnetTransport, Sink, Peer],
) -> None:
    transport, _sink, peer = connected
    size = 32 * 1024 * 1024
    writing = asyncio.create_task(transport.write(b"\x02" * size))
    draining = asyncio.create_task(transport.drain())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not draining.done()
    await peer.read_until(size)
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(writing, draining)
