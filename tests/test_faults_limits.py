"""Resource limits (#14, faults 5): a real `serve` with a low `ulimit -n` refuses the connections
it has no file descriptor for at once (logged at most once a second) while the consoles already
open carry on, and takes new ones again once some close. (The TLS handshake bound, 5 s, is
tested in test_security_listener.py; memory with 256 stalled clients is measured by
`python -m bench.faults stalled`.) Clients that stopped reading share a port-wide budget."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

from bridge.console.fanout import PORT_BUFFER, Budget, Chunk, Subscriber
from tests.conftest import PtyDevice, WsReader, client_ssl_context
from tests.served import Served, make_state, nofile_wrapper

LIMIT = 40  # the daemon uses about 18 at rest


async def tls_connect(host: str, port: int) -> asyncio.StreamWriter | None:
    """A completed TLS handshake (kept open), or None when the bridge closed the connection."""
    try:
        _reader, writer = await asyncio.open_connection(host, port, ssl=client_ssl_context())
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
        return None
    return writer


async def test_out_of_file_descriptors_refuses_new_connections_only(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n'
        f'[ports.lab]\ndevice = "{pty_device.path}"\n'
    )
    served = Served(config, make_state(state))
    await served.start(wrapper=nofile_wrapper(LIMIT))
    host, port = served.base.removeprefix("https://").rsplit(":", 1)
    held: list[asyncio.StreamWriter] = []
    try:
        await served.wait_port("lab", lambda p: p["online"])
        async with served.session() as s:
            console = WsReader(await s.ws_connect(f"{served.base}/api/ports/lab/console?mode=ro"))
            await console.message("hello")
            began = time.monotonic()
            refused = 0
            for _ in range(2 * LIMIT):  # hold connections until the bridge has no fd left
                # a refusal must come at once: a connection left in the backlog would hang
                writer = await asyncio.wait_for(tls_connect(host, int(port)), 20)
                if writer is None:
                    refused += 1
                    if refused == 10:
                        break
                else:
                    held.append(writer)
            assert refused == 10 and len(held) < LIMIT
            pty_device.write(b"the console carries on\r\n")  # the open console: still served
            await console.until(lambda r: b"carries on" in r.data)
            lines = served.count("refused")
            assert 1 <= lines <= 1 + (time.monotonic() - began)  # at most one a second
            assert "ulimit -n" in await served.wait_line("refused")

            for writer in held:  # descriptors free again: new connections are taken
                writer.close()
            held.clear()
            async with asyncio.timeout(20):
                while (writer := await tls_connect(host, int(port))) is None:
                    await asyncio.sleep(0.1)
            writer.close()
            ports = await served.get_json("/api/ports")
            assert ports[0]["online"]
            await console.ws.close()
    finally:
        for writer in held:
            writer.close()
        assert await served.stop() == 0


class StalledOutlet:
    """A client connection that stopped reading: `queued` bytes sit in its buffer."""

    def __init__(self, queued: int) -> None:
        self.queued = queued

    def send_chunk(self, chunk: Chunk) -> None:
        self.queued += len(chunk.data)

    def send_history(self, offset: int, data: bytes) -> None:
        self.queued += len(data)

    def send_gap(self, start: int, end: int) -> None: ...

    def backlog(self) -> int:
        return self.queued

    async def drained(self) -> None:
        await asyncio.Event().wait()  # never: it does not read


class Output:
    offset = 0

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes]:
        return offset, b""


async def test_stalled_clients_share_a_port_wide_budget() -> None:
    """256 clients that stopped reading may queue 256 KiB each, not client_buffer (1 MiB):
    together about PORT_BUFFER. With few clients each has its client_buffer again."""
    budget = Budget(1 << 20)
    outlets = [StalledOutlet(300 * 1024) for _ in range(256)]
    subs = [Subscriber(o, Output(), budget, 0) for o in outlets]
    assert budget.limit() == PORT_BUFFER // 256 == 256 * 1024
    for sub in subs:
        sub.on_chunk(Chunk(b"x" * 100, 0))
    assert not any(s.live for s in subs)  # over their share: caught up later, not fed now
    assert sum(o.queued for o in outlets) == 256 * 300 * 1024  # nothing more was queued
    for sub in subs[8:]:
        await sub.close()
    assert budget.clients == 8 and budget.limit() == 1 << 20
    fresh = Subscriber(StalledOutlet(300 * 1024), Output(), budget, 0)
    fresh.on_chunk(Chunk(b"x" * 100, 0))
    assert fresh.live  # 300 KiB is within a 1 MiB budget
    for sub in [*subs[:8], fresh]:
        await sub.close()
    assert budget.clients == 0
