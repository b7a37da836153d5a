"""Resource limits (#14, faults 5): a real `serve` with a low `ulimit -n` refuses the connections
it has no file descriptor for at once (logged at most once a second) while the consoles already
open carry on, and takes new ones again once some close. (The TLS handshake bound, 5 s, is
tested in test_security_listener.py; memory with many stalled clients is measured in bench/.)"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

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
